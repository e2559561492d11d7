// lit_seq2seq.mjs: decode lit-seq2seq ONNX exports (export/README.md, format_version 1 and 2) from JavaScript.
//
// One isomorphic ES module: no Node-only imports, so the same file runs in Node (onnxruntime-node) and in a browser
// (onnxruntime-web). The caller passes the `ort` namespace and the raw bytes of the files; everything else (settings,
// names, integrity) is read from the bytes themselves, because onnxruntime-node exposes no custom metadata.
//
// What it refuses, always with an Error whose message names the file or the source row:
// - a missing encoder.onnx / decoder_step.onnx, a file that is truncated or altered (content_sha256), a contract
//   format_version other than "1" and "2", a file without a metadata key its version lists, files from two different
//   exports (export_id);
// - sources the Python runtime refuses (OnnxSeq2Seq.check_source): an empty batch or row, non-integer or
//   out-of-range ids, padding before a token, row lengths outside the trained range (unless allowUntrainedLengths).
//   These are checked before onnxruntime runs: its LSTM kernel aborts the whole process on a batch of 0 rows;
// - non-finite logits in the two-graph loop and beam search (NaN would make argmax meaningless: an error, never a
//   silent answer). greedy.onnx does its argmax inside the graph and cannot report them.

export const ENCODER_FILE = "encoder.onnx";
export const DECODER_FILE = "decoder_step.onnx";
export const GREEDY_FILE = "greedy.onnx";
export const FORMAT_VERSIONS = ["1", "2"];
// The metadata every file of a format_version holds (export/README.md, "Metadata keys"; context_rnn, absent in exports
// made before it, is the one that may be missing). A file without one is refused: without export_id in each file, a
// mixed folder would pass as one export.
const TEXT_KEYS = ["source_tokens", "target_tokens", "source_tokenizer", "target_tokenizer", "source_lowercase",
  "target_lowercase", "normalization", "unk_token"];
const COMMON_KEYS = ["format_version", "producer_version", "task", "pad_token", "start_token", "eos_token", "min_token",
  "source_length", "min_source_length", "max_target_length", "hidden_size", "num_layers", "cell", "bidirectional",
  "attention", "memory_dim", "inputs", "outputs", "export_id", "content_sha256"];
export const REQUIRED_KEYS = {
  1: [...COMMON_KEYS, "vocab_size"],
  2: [...COMMON_KEYS, "source_vocab_size", "target_vocab_size", ...TEXT_KEYS],
};
const OUT_SUFFIX = "_out";
export const MAX_STEPS = 4096; // the Python runtime's limit for max_len
// The Python runtime's longest source, allowUntrainedLengths or not: onnxruntime's RNN holds every step's input
// projection (a 20,000,000-character line took 22 GB).
export const MAX_SOURCE_TOKENS = 100_000;
// Larger batches decode in chunks of this many rows of similar length, each cut to its longest row, as the Python
// runtime does: onnxruntime's LSTM holds every step's input projection of the whole batch, padded to its longest row
// (export/README.md, "Large batches").
export const CHUNK_ROWS = 256;
// Beam search holds K rows of state per source row (the attention memory repeated per beam): its chunks are of at most
// this many source rows x beams (256 source rows at beam size 4, 1 at 1024), as in the Python runtime.
export const BEAM_CHUNK_ROWS = 1024;
// Beam search (export/README.md, "Beam search (normative)"): the Python runtime's bounds, and the axis of each state
// tensor that runs over the batch (rows are repeated and reordered along it).
export const MAX_BEAM_SIZE = 1024;
export const MAX_LENGTH_PENALTY = 10;
export const BATCH_AXIS = { h: 1, c: 1, memory: 0, memory_mask: 0 };

/** A model file that is missing, damaged, altered, of an unknown version or not from the same export. */
export class ModelFileError extends Error {
  constructor(message) {
    super(message);
    this.name = "ModelFileError";
  }
}

/** A source (ids or text) the model must not be asked to decode. */
export class InputError extends Error {
  constructor(message) {
    super(message);
    this.name = "InputError";
  }
}

// ---- arguments: an app's mistake is an error naming it, never a silently ignored option -------------------------

/** A value as a message shows it: strings quoted, NaN, Infinity and BigInts as written. */
function describe(value) {
  if (typeof value === "bigint") return `${value}n`;
  if (typeof value === "number" || value === undefined || typeof value === "function") return String(value);
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/** `options` as an object whose keys are all `allowed` (undefined: {}); else TypeError / InputError naming it. */
function checkOptions(options, allowed, what) {
  if (options === undefined) return {};
  if (options === null || typeof options !== "object" || Array.isArray(options)) {
    throw new TypeError(`${what}: options must be an object ({${allowed.join(", ")}}), got ${describe(options)}`);
  }
  const unknown = Object.keys(options).find((key) => !allowed.includes(key));
  if (unknown !== undefined) {
    throw new InputError(`${what}: unknown option ${unknown}; the options are ${allowed.join(", ")}`);
  }
  return options;
}

function checkFlag(value, name) {
  if (typeof value !== "boolean") throw new TypeError(`${name} must be true or false, got ${describe(value)}`);
}

// The onnxruntime namespace the caller passes first: a call that forgot it would otherwise blame its other arguments.
function checkOrt(ort) {
  if (typeof ort?.Tensor !== "function" || typeof ort?.InferenceSession?.create !== "function") {
    throw new TypeError(
      "ort: pass the onnxruntime module first (import ort from \"onnxruntime-node\", or onnxruntime-web's), got " +
        describe(ort),
    );
  }
}

const LOAD_OPTIONS = ["folder", "sessionOptions", "verifyHash"];
const GREEDY_OPTIONS = ["twoGraph", "allowUntrainedLengths", "maxLen"];
const BEAM_OPTIONS = ["beamSize", "lengthPenalty", "allowUntrainedLengths", "maxLen", "nBest"];
const SOURCE_OPTIONS = ["allowUntrainedLengths"];
const TEXT_OPTIONS = [...SOURCE_OPTIONS, "where"];

// ---- protobuf: just enough to read ModelProto.metadata_props -----------------------------------------------------

const METADATA_PROPS = 14; // ModelProto field: repeated StringStringEntryProto (key = 1, value = 2)

// A varint as a Number (exact up to 2^53, beyond any length a file can have); bounds-checked.
function readVarint(bytes, pos, name) {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < 10; i++) {
    if (pos >= bytes.length) throw new ModelFileError(`${name}: truncated (a varint runs past the end of the file)`);
    const b = bytes[pos++];
    value += (b & 0x7f) * scale; // multiply, not shift: shifts are 32-bit in JavaScript
    if (b < 0x80) return [value, pos];
    scale *= 128;
  }
  throw new ModelFileError(`${name}: not an ONNX model (a varint longer than 10 bytes)`);
}

// Position after the field whose tag was just read; every wire type is skipped, groups by their nesting.
function skipField(bytes, pos, wire, name, depth = 0) {
  const need = (n) => {
    if (n > bytes.length - pos) throw new ModelFileError(`${name}: truncated (a field runs past the end of the file)`);
    return pos + n;
  };
  switch (wire) {
    case 0:
      return readVarint(bytes, pos, name)[1];
    case 1:
      return need(8);
    case 2: {
      const [length, at] = readVarint(bytes, pos, name);
      pos = at;
      return need(length);
    }
    case 5:
      return need(4);
    case 3: {
      if (depth > 64) throw new ModelFileError(`${name}: not an ONNX model (groups nested too deeply)`);
      for (;;) {
        const [tag, at] = readVarint(bytes, pos, name);
        if ((tag & 7) === 4) return at;
        pos = skipField(bytes, at, tag & 7, name, depth + 1);
      }
    }
    default:
      throw new ModelFileError(`${name}: not an ONNX model (protobuf wire type ${wire})`);
  }
}

const utf8 = new TextDecoder("utf-8", { fatal: true });

function readString(bytes, start, end, name) {
  try {
    return utf8.decode(bytes.subarray(start, end));
  } catch {
    throw new ModelFileError(`${name}: not an ONNX model (metadata that is not UTF-8)`);
  }
}

/** metadata_props of a serialized ONNX ModelProto as a plain object (key -> value, all strings). */
export function readMetadata(bytes, name = "model") {
  if (!(bytes instanceof Uint8Array)) throw new TypeError(`${name}: the file's bytes must be a Uint8Array`);
  const meta = {};
  let pos = 0;
  while (pos < bytes.length) {
    const [tag, at] = readVarint(bytes, pos, name);
    const field = Math.floor(tag / 8);
    const wire = tag & 7;
    if (field === 0) throw new ModelFileError(`${name}: not an ONNX model (protobuf field number 0)`);
    pos = skipField(bytes, at, wire, name);
    if (field !== METADATA_PROPS || wire !== 2) continue;
    // The entry's bytes end at pos: read its key (field 1) and value (field 2), skip anything else in it.
    let [, p] = readVarint(bytes, at, name);
    let key = "";
    let value = "";
    while (p < pos) {
      const [entryTag, q] = readVarint(bytes, p, name);
      const next = skipField(bytes.subarray(0, pos), q, entryTag & 7, name);
      const entryField = Math.floor(entryTag / 8); // not >> 3: a tag may exceed 32 bits
      if ((entryTag & 7) === 2 && (entryField === 1 || entryField === 2)) {
        const [length, s] = readVarint(bytes, q, name);
        const text = readString(bytes, s, s + length, name);
        if (entryField === 1) key = text;
        else value = text;
      }
      p = next;
    }
    meta[key] = value;
  }
  return meta;
}

// ---- integrity: content_sha256 ----------------------------------------------------------------------------------

const HASH_KEY = "content_sha256";
// In the bytes the value follows its key and the tag + length of StringStringEntryProto.value: 0x12 0x40 (64 bytes).
const HASH_MARKER = new Uint8Array([...new TextEncoder().encode(HASH_KEY), 0x12, 0x40]);

function findAll(bytes, pattern) {
  const hits = [];
  for (let i = bytes.indexOf(pattern[0]); i >= 0 && i <= bytes.length - pattern.length;) {
    let j = 1;
    while (j < pattern.length && bytes[i + j] === pattern[j]) j++;
    if (j === pattern.length) hits.push(i);
    i = bytes.indexOf(pattern[0], i + 1);
  }
  return hits;
}

async function sha256Hex(bytes) {
  const subtle = globalThis.crypto?.subtle;
  if (!subtle) {
    // Node 18 has it only as node:crypto's webcrypto (decode.mjs installs it); browsers only in secure contexts.
    throw new Error(
      "SHA-256 needs globalThis.crypto.subtle: Node >= 19, or a page served over https or from localhost",
    );
  }
  const digest = new Uint8Array(await subtle.digest("SHA-256", bytes));
  return Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Throw ModelFileError unless the file's content_sha256 matches its bytes (export/README.md, Integrity check); returns
 * the stored hash. Works on the raw bytes alone, so a truncated file is named as such before any parsing.
 */
export async function checkContentHash(bytes, name = "model") {
  const hits = findAll(bytes, HASH_MARKER);
  const start = hits.length ? hits[0] + HASH_MARKER.length : bytes.length;
  if (hits.length === 0 || bytes.length - start < 64) {
    throw new ModelFileError(`${name}: no ${HASH_KEY} metadata (truncated, or not exported by lit-seq2seq)`);
  }
  if (hits.length > 1) {
    // Which one is the value would be a guess: a file exported by lit-seq2seq holds exactly one.
    throw new ModelFileError(`${name}: ${hits.length} ${HASH_KEY} entries, exactly one expected (altered?)`);
  }
  const stored = String.fromCharCode(...bytes.subarray(start, start + 64));
  if (!/^[0-9a-f]{64}$/.test(stored)) {
    // The export writes lower-case hex; anything else is not the value the export wrote.
    throw new ModelFileError(
      `${name}: content hash mismatch, its ${HASH_KEY} is not 64 lower-case hex digits; export it again`,
    );
  }
  // The placeholder goes back exactly where the value stands, not wherever those 64 bytes occur first.
  // A copy whatever the subclass: Node's Buffer, a Uint8Array, slices to a view of the caller's bytes.
  const copy = Uint8Array.prototype.slice.call(bytes);
  copy.fill(0x30, start, start + 64);
  if ((await sha256Hex(copy)) !== stored) {
    throw new ModelFileError(`${name}: content hash mismatch, the file was altered or damaged; export it again`);
  }
  return stored;
}

// ---- text (format_version 2) --------------------------------------------------------------------------------------

// Python's str.split() whitespace (str.isspace); JavaScript's \s differs (\x1c-\x1f, \x85 missing, \ufeff extra).
export const PY_SPACE = /[\t\n\v\f\r\x1c-\x1f \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]+/u;
const ALL_PY_SPACE = new RegExp(`^${PY_SPACE.source}$`, "u");
// a char model's space: the message alone read as a typo (" 猫" from a JSON line, a word with a space)
const SPACE_HINT = " (whitespace: no training source held it)";

// C0 and C1 control characters, DEL and lone surrogates (with the u flag a surrogate pair is one code point and never
// matches): a text holding one is refused, as by the Python runtime (a tab or newline would silently split it).
const CONTROL = /[\u0000-\u001f\u007f-\u009f\ud800-\udfff]/u;

export function checkPrintable(text, where) {
  const bad = CONTROL.exec(text);
  if (!bad) return;
  const code = bad[0].codePointAt(0);
  const kind = code >= 0xd800 && code <= 0xdfff ? "lone surrogate" : "control character";
  const at = Array.from(text.slice(0, bad.index)).length + 1; // in code points, 1-based
  const hex = code.toString(16).toUpperCase().padStart(4, "0");
  const why = code === 0x0d ? CR_HINT : "";
  throw new InputError(`${where}: ${kind} U+${hex} at character ${at}; texts must be printable${why}`);
}

// A carriage return inside a line: most often the line ends of a file saved with CR alone (as Python's text.CR_HINT)
const CR_HINT = " (a carriage return inside a line: lines end at LF or CRLF; convert a file with CR line ends)";

export const SHOWN_CHARS = 40; // an unknown token in a message is cut to this many characters, as in Python

// A token as messages show it: as Python's repr() quotes it (the Python runtime's messages, byte for byte), so that
// invisible characters are escaped ("\u200b" does not read as "a"); a long one (a line without spaces is one token)
// cut after SHOWN_CHARS code points, its length given.
export function shown(token) {
  const chars = Array.from(token);
  if (chars.length > SHOWN_CHARS) {
    const length = chars.length.toLocaleString("en-US");
    return `${pyRepr(chars.slice(0, SHOWN_CHARS))}... (${length} characters)`;
  }
  return pyRepr(chars);
}

// Python's repr() of a str given as code points: single quotes unless only double ones avoid escaping; \\, \t, \n, \r
// and the quote escaped; what str.isprintable() calls unprintable (categories C and Z but the space) as \xhh, \uhhhh
// or \Uhhhhhhhh. (Unassigned code points follow Node's Unicode version, which may be newer than Python's.)
function pyRepr(chars) {
  const quote = chars.includes("'") && !chars.includes('"') ? '"' : "'";
  const escaped = chars.map((c) => {
    if (c === quote || c === "\\") return `\\${c}`;
    if (c === "\t" || c === "\n" || c === "\r") return { "\t": "\\t", "\n": "\\n", "\r": "\\r" }[c];
    if (c === " " || !/[\p{C}\p{Z}]/u.test(c)) return c;
    const code = c.codePointAt(0);
    const [prefix, width] = code < 0x100 ? ["x", 2] : code < 0x10000 ? ["u", 4] : ["U", 8];
    return `\\${prefix}${code.toString(16).padStart(width, "0")}`;
  });
  return `${quote}${escaped.join("")}${quote}`;
}

function splitText(text, tokenizer) {
  if (tokenizer === "char") return Array.from(text); // code points, not UTF-16 units
  const parts = text.split(PY_SPACE);
  return parts.filter((t) => t !== "");
}

function parseVocab(json, what) {
  if (!json) return null;
  let tokens;
  try {
    tokens = JSON.parse(json);
  } catch {
    tokens = null;
  }
  if (!Array.isArray(tokens) || !tokens.every((t) => typeof t === "string")) {
    throw new ModelFileError(`${what}: not a JSON array of strings`);
  }
  return tokens;
}

// ---- the model -----------------------------------------------------------------------------------------------------

function intMeta(meta, key, name) {
  const text = meta[key];
  if (text === undefined || !/^-?\d+$/.test(text)) {
    throw new ModelFileError(`${name}: metadata ${key} is ${JSON.stringify(text)}, an integer expected`);
  }
  return Number(text);
}

/**
 * Load an export from the bytes of its files: {encoder, decoder, greedy} (Uint8Array; greedy may be absent: exports
 * made before greedy.onnx existed). `folder` (e.g. the export folder's path or URL) prefixes the file names in
 * messages; `sessionOptions` go to ort.InferenceSession.create. Resolves to a Seq2Seq.
 */
export async function loadModel(ort, files, options) {
  checkOrt(ort);
  const { folder = "", sessionOptions = {}, verifyHash = true } = checkOptions(options, LOAD_OPTIONS, "loadModel");
  const file = { encoder: ENCODER_FILE, decoder: DECODER_FILE, greedy: GREEDY_FILE };
  const label = Object.fromEntries(Object.entries(file).map(([k, f]) => [k, folder ? `${folder}/${f}` : f]));
  for (const part of ["encoder", "decoder"]) {
    if (!files?.[part]) {
      throw new ModelFileError(
        `${label[part]}: missing; a model folder holds ${ENCODER_FILE} and ${DECODER_FILE} written by \`lit-seq2seq export\``,
      );
    }
  }
  files = { ...files }; // bytes as Uint8Array: fetch() gives an ArrayBuffer
  for (const part of Object.keys(file)) {
    const bytes = files[part];
    if (bytes === undefined || bytes instanceof Uint8Array) continue;
    if (bytes instanceof ArrayBuffer) {
      files[part] = new Uint8Array(bytes);
      continue;
    }
    throw new TypeError(
      `files.${part} (${label[part]}): the file's bytes are expected (a Uint8Array, as readFileSync gives, or an ` +
        `ArrayBuffer), got ${typeof bytes === "string" ? "a string: read the file first" : describe(bytes)}`,
    );
  }
  const parts = ["encoder", "decoder", ...(files.greedy ? ["greedy"] : [])];
  const metas = {};
  for (const part of parts) {
    const stored = verifyHash ? await checkContentHash(files[part], label[part]) : null;
    metas[part] = readMetadata(files[part], label[part]);
    if (stored !== null && metas[part][HASH_KEY] !== stored) {
      throw new ModelFileError(`${label[part]}: its ${HASH_KEY} bytes are not its metadata entry (altered?)`);
    }
    const version = metas[part].format_version;
    if (!FORMAT_VERSIONS.includes(version)) {
      const known = FORMAT_VERSIONS.map((v) => `'${v}'`).join(" and ");
      throw new ModelFileError(
        `${label[part]}: contract format_version ${version === undefined ? "(none)" : `'${version}'`}; this reader knows ${known}`,
      );
    }
    const missing = REQUIRED_KEYS[version].filter((key) => !(key in metas[part]));
    if (missing.length) {
      throw new ModelFileError(
        `${label[part]}: no metadata ${missing.join(", ")} (damaged, or not written by lit-seq2seq); export it again`,
      );
    }
  }
  // Every file of one export carries its export_id (and so its format_version): anything else is a mixed folder.
  for (const part of parts.slice(1)) {
    if (
      metas[part].export_id !== metas.encoder.export_id ||
      metas[part].format_version !== metas.encoder.format_version
    ) {
      throw new ModelFileError(
        `${folder ? `${folder}: ` : ""}${ENCODER_FILE} and ${file[part]} come from different exports`,
      );
    }
  }
  const sessions = {};
  for (const part of parts) {
    try {
      // Warnings off by default (greedy.onnx's max_len initializer-as-input draws one on every load).
      sessions[part] = await ort.InferenceSession.create(files[part], { logSeverityLevel: 3, ...sessionOptions });
    } catch (error) {
      throw new ModelFileError(`${label[part]}: onnxruntime cannot load it (damaged?): ${error.message}`);
    }
  }
  return new Seq2Seq(sessions, metas, label);
}

export class Seq2Seq {
  constructor(sessions, metas, label) {
    this.sessions = sessions;
    this.label = label;
    this.meta = metas.decoder; // settings come from the step graph, as in the Python runtime
    const m = this.meta;
    const name = label.decoder;
    this.formatVersion = m.format_version;
    // v2 splits the vocabulary; a v1 file has one size for both sides.
    this.sourceVocabSize = intMeta(m, m.source_vocab_size !== undefined ? "source_vocab_size" : "vocab_size", name);
    this.targetVocabSize = intMeta(m, m.target_vocab_size !== undefined ? "target_vocab_size" : "vocab_size", name);
    this.padToken = intMeta(m, "pad_token", name);
    this.startToken = intMeta(m, "start_token", name);
    this.eosToken = m.eos_token ? intMeta(m, "eos_token", name) : null;
    this.minToken = intMeta(m, "min_token", name);
    this.sourceLength = intMeta(m, "source_length", name);
    this.minSourceLength = intMeta(m, "min_source_length", name);
    this.maxTargetLength = intMeta(m, "max_target_length", name);
    // I/O names from the metadata, checked against what onnxruntime sees: no guessing from the cell type.
    const io = (part) => ({
      inputs: (metas[part].inputs ?? "").split(",").filter(Boolean),
      outputs: (metas[part].outputs ?? "").split(",").filter(Boolean),
    });
    this.encoderIO = io("encoder");
    this.decoderIO = io("decoder");
    const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
    for (const part of ["encoder", "decoder"]) {
      const s = sessions[part];
      const want = io(part);
      if (!same(s.inputNames, want.inputs) || !same(s.outputNames, want.outputs)) {
        throw new ModelFileError(
          `${label[part]}: I/O names ${s.inputNames}/${s.outputNames} do not match its metadata ${want.inputs}/${want.outputs}`,
        );
      }
    }
    // ... and against the contract's roles: a file's own metadata agrees with it even in a folder whose files were
    // swapped or renamed.
    const enc = this.encoderIO;
    const dec = this.decoderIO;
    const stepRule =
      same(enc.inputs, ["source"]) &&
      dec.inputs[0] === "token" &&
      dec.outputs[0] === "logits" &&
      same(dec.inputs.slice(1), enc.outputs) &&
      dec.outputs.slice(1).every((o) => o.endsWith("_out") && enc.outputs.includes(o.slice(0, -4)));
    if (!stepRule) {
      throw new ModelFileError(
        `${label.encoder}, ${label.decoder}: I/O names ${enc.inputs}/${enc.outputs} and ${dec.inputs}/${dec.outputs} ` +
          "do not match the contract (encoder: source -> state; decoder step: token + state -> logits + X_out)",
      );
    }
    if (
      sessions.greedy &&
      (!sessions.greedy.inputNames.includes("source") || !sessions.greedy.outputNames.includes("tokens"))
    ) {
      throw new ModelFileError(`${label.greedy}: no source input or tokens output`);
    }
    // Text (v2): "" means an id-only model. Checked here so that a bad vocabulary fails at load, not mid-decode.
    this.sourceTokens = parseVocab(m.source_tokens, `${name}: metadata source_tokens`);
    this.targetTokens = parseVocab(m.target_tokens, `${name}: metadata target_tokens`);
    for (const [side, tokens, size] of [
      ["source", this.sourceTokens, this.sourceVocabSize],
      ["target", this.targetTokens, this.targetVocabSize],
    ]) {
      if (tokens && tokens.length !== size) {
        throw new ModelFileError(
          `${name}: metadata ${side}_tokens holds ${tokens.length} tokens, ${side} vocabulary size is ${size}`,
        );
      }
      const tokenizer = m[`${side}_tokenizer`] ?? "";
      if (!["", "char", "space"].includes(tokenizer)) {
        throw new ModelFileError(
          `${name}: metadata ${side}_tokenizer ${JSON.stringify(tokenizer)}; this reader knows "char" and "space"`,
        );
      }
    }
    if (!["", "NFC", undefined].includes(m.normalization)) {
      throw new ModelFileError(
        `${name}: metadata normalization ${JSON.stringify(m.normalization)}; this reader knows "NFC"`,
      );
    }
    this.sourceIds = this.sourceTokens && new Map(this.sourceTokens.map((t, i) => [t, i]));
    this.unkToken = m.unk_token ? intMeta(m, "unk_token", name) : null;
    this._checkValues(name);
    this._checkShapes(name);
  }

  // The sizes the graphs declare (what metadata copied from another export would contradict): h's width, the
  // memory's, the logits', as OnnxSeq2Seq._check_metadata. A runtime that lists no shapes (older onnxruntime
  // releases have no inputMetadata) or a symbolic axis leaves nothing to compare.
  _checkShapes(name) {
    const m = this.meta;
    const declared = [
      ["hidden_size", intMeta(m, "hidden_size", name), [["decoder", "h", 2], ["encoder", "h", 2]]],
      ["target_vocab_size", this.targetVocabSize, [["decoder", "logits", 1]]],
    ];
    if (m.attention === "1") {
      const places = [["decoder", "memory", 2], ["encoder", "memory", 2]];
      declared.push(["memory_dim", intMeta(m, "memory_dim", name), places]);
    }
    for (const [key, size, places] of declared) {
      for (const [part, io, axis] of places) {
        const s = this.sessions[part];
        const value = [...(s.inputMetadata ?? []), ...(s.outputMetadata ?? [])].find((v) => v.name === io);
        const dim = value?.shape?.[axis];
        if (Number.isInteger(dim) && dim !== size) {
          throw new ModelFileError(`${name}: metadata ${key} is ${size}, but the graphs' ${io} has ${dim} on axis ${axis}`);
        }
      }
    }
  }

  // Values no export holds (metadata written or edited by hand, its hash stamped again), refused as the Python
  // runtime refuses them (OnnxSeq2Seq._check_metadata), naming the key: each was used unchecked, to loop a billion
  // steps or print one decoded line as two.
  _checkValues(name) {
    const m = this.meta;
    const refuse = (key, value, expected) => {
      throw new ModelFileError(`${name}: metadata ${key} is ${value}, ${expected}`);
    };
    for (const [key, value] of [
      ["source_vocab_size", this.sourceVocabSize],
      ["target_vocab_size", this.targetVocabSize],
      ["num_layers", intMeta(m, "num_layers", name)],
      ["hidden_size", intMeta(m, "hidden_size", name)],
      ["min_source_length", this.minSourceLength],
    ]) {
      if (value < 1) refuse(key, value, "at least 1 expected");
    }
    if (!(this.maxTargetLength >= 1 && this.maxTargetLength <= MAX_STEPS)) {
      refuse("max_target_length", this.maxTargetLength, `1 to ${MAX_STEPS} expected`);
    }
    if (!(this.minSourceLength <= this.sourceLength && this.sourceLength <= MAX_SOURCE_TOKENS)) {
      const most = MAX_SOURCE_TOKENS.toLocaleString("en-US");
      refuse("source_length", this.sourceLength, `min_source_length to ${most} expected`);
    }
    const memoryDim = intMeta(m, "memory_dim", name);
    if (memoryDim > 0 !== (m.attention === "1") || memoryDim < 0) {
      refuse("memory_dim", memoryDim, "above 0 with attention, else 0, expected");
    }
    const ids = { pad_token: this.padToken, start_token: this.startToken, eos_token: this.eosToken };
    for (const [key, id] of Object.entries(ids)) {
      if (id !== null && !(id >= 0 && id < this.targetVocabSize)) {
        refuse(key, id, `a target id (0 to ${this.targetVocabSize - 1}) expected`);
      }
    }
    if (!(this.minToken >= 0 && this.minToken < this.sourceVocabSize) || this.minToken <= this.padToken) {
      refuse("min_token", this.minToken, "above pad_token and below source_vocab_size expected");
    }
    if (!this.isText) return;
    if (this.formatVersion === "1") refuse("format_version", '"1"', "2 for a text model (source_tokens is set)");
    if (this.padToken !== 0 || this.eosToken !== 1) {
      refuse("pad_token, eos_token", `(${this.padToken}, ${this.eosToken})`, "0, 1 for a text model");
    }
    for (const side of ["source", "target"]) {
      const flag = m[`${side}_lowercase`];
      if (flag !== "0" && flag !== "1") refuse(`${side}_lowercase`, JSON.stringify(flag), "0 or 1 expected");
      const tokens = side === "source" ? this.sourceTokens : this.targetTokens;
      const reserved = side === "source" && this.unkToken !== null ? 3 : 2; // <pad>, </s> and maybe <unk>
      for (const token of tokens.slice(reserved)) {
        // what the tokenizer makes: one code point (char), no whitespace (space); printable, not empty
        const made = splitText(this._norm(token, flag === "1"), m[`${side}_tokenizer`]);
        if (token === "" || CONTROL.test(token) || made.length !== 1 || made[0] !== token) {
          const expected = `tokens its ${m[`${side}_tokenizer`]} tokenizer makes expected`;
          refuse(`${side}_tokens`, `holding ${shown(token)}`, expected);
        }
      }
    }
  }

  /** Whether the export maps text to ids and back (format_version 2 text keys present). */
  get isText() {
    return Boolean(this.sourceTokens && this.targetTokens && this.meta.source_tokenizer && this.meta.target_tokenizer);
  }

  /**
   * Validate a batch of sources (an array of equal-length arrays of integer ids, right-padded with the pad token; or
   * one flat array of ids) as OnnxSeq2Seq.check_source does, with its messages. Returns {rows, single, batch, width}.
   */
  checkSource(source, options) {
    const { allowUntrainedLengths = false } = checkOptions(options, SOURCE_OPTIONS, "checkSource");
    checkFlag(allowUntrainedLengths, "allowUntrainedLengths");
    if (!Array.isArray(source) && !ArrayBuffer.isView(source))
      throw new TypeError("source must be an array of token ids or of rows of them");
    if (source.length === 0) throw new InputError("source: empty batch");
    // One sequence (a flat array of ids) is a batch of one row, named without a row number, as in Python.
    const single = !Array.isArray(source[0]) && !ArrayBuffer.isView(source[0]);
    const rows = single ? [source] : source;
    const width = rows[0].length;
    for (const row of rows) {
      if (!Array.isArray(row) && !ArrayBuffer.isView(row))
        throw new TypeError("source must be an array of token ids or of rows of them");
      if (row.length !== width)
        throw new InputError("source: rows have different lengths; right-pad them with the pad token");
    }
    if (width === 0) throw new InputError("source: empty sequence (source_len is 0)");
    if (width > MAX_SOURCE_TOKENS) {
      const wide = `${width.toLocaleString("en-US")} tokens wide`;
      const most = MAX_SOURCE_TOKENS.toLocaleString("en-US");
      const why = "onnxruntime's RNN holds every step's input projection";
      throw new InputError(`source: ${wide}; at most ${most} are decoded (${why})`);
    }
    const { padToken: pad, minToken: lo, sourceVocabSize: vocab } = this;
    // Indices (0-based) as the caller holds them: source[r, c], source[c] for a single sequence, as Python names them.
    const where = (r, c) => {
      const index = [...(single ? [] : [r]), ...(c === undefined ? [] : [c])];
      return index.length ? `source[${index.join(", ")}]` : "source";
    };
    // The checks run in the Python runtime's order, so that both name the same first problem.
    rows.forEach((row, r) => {
      for (let c = 0; c < width; c++) {
        const t = typeof row[c] === "bigint" ? Number(row[c]) : row[c];
        if (typeof t !== "number" || !Number.isSafeInteger(t)) {
          throw new InputError(`${where(r, c)}: ${JSON.stringify(String(row[c]))} is not an integer token id`);
        }
        if (t !== pad && (t < lo || t >= vocab)) {
          throw new InputError(
            `${where(r, c)}: token ${t} is out of range; tokens must be in [${lo}, ${vocab - 1}], or ${pad} (padding) at the end`,
          );
        }
      }
    });
    rows.forEach((row, r) => {
      if (Number(row[0]) === pad) throw new InputError(`${where(r)}: empty sequence (starts with padding)`);
    });
    const lengths = rows.map((row, r) => {
      let n = width;
      for (let c = 1; c < width; c++) {
        if (Number(row[c - 1]) === pad && Number(row[c]) !== pad) {
          throw new InputError(`${where(r, c)}: token after padding; pad only at the end`);
        }
        if (Number(row[c]) === pad && n === width) n = c;
      }
      return n;
    });
    if (!allowUntrainedLengths) {
      const r = lengths.findIndex((n) => n < this.minSourceLength || n > this.sourceLength);
      if (r >= 0) throw new InputError(this._untrainedLength(where(r), lengths[r], "token"));
    }
    return { rows, single, batch: rows.length, width, lengths };
  }

  // As the Python runtime words it; `read`: how the model read a text, when not as typed.
  _untrainedLength(where, length, unit, read = "") {
    const [low, high] = [this.minSourceLength, this.sourceLength];
    const trainedOn = low === high ? `exactly ${low}` : `${low} to ${high}`;
    return (
      `${where}: ${length} ${unit}${length === 1 ? "" : "s"}${read}; this model was trained on sources of ${trainedOn} ` +
      `${unit}${high === 1 ? "" : "s"} (pass allowUntrainedLengths: true / --allow-untrained-lengths to decode anyway)`
    );
  }

  /** A decoded row as a plain array: the tokens before the end token (as OnnxSeq2Seq.strip). */
  strip(row) {
    const out = [];
    for (const t of row) {
      if (t === this.eosToken || (this.eosToken !== null && t === this.padToken)) break;
      out.push(t);
    }
    return out;
  }

  _sourceTensor(ort, source, batch, width) {
    const data = new BigInt64Array(batch * width);
    source.forEach((row, r) => {
      for (let c = 0; c < width; c++) data[r * width + c] = BigInt(row[c]);
    });
    return new ort.Tensor("int64", data, [batch, width]);
  }

  _maxLen(maxLen, allowUntrainedLengths) {
    if (maxLen === undefined || maxLen === null) return this.maxTargetLength;
    if (!Number.isInteger(maxLen) || maxLen < 1 || maxLen > MAX_STEPS) {
      throw new InputError(`maxLen must be an integer in [1, ${MAX_STEPS}], got ${describe(maxLen)}`);
    }
    if (this.eosToken === null && maxLen > this.maxTargetLength && !allowUntrainedLengths) {
      // without an end token every answer runs maxLen steps: the ones past the trained length are noise
      throw new InputError(
        `maxLen ${maxLen}: this model has no end token and was trained to answer with exactly ` +
          `${this.maxTargetLength} tokens, so the steps past them are untrained (pass allowUntrainedLengths: true ` +
          "to decode them anyway)",
      );
    }
    return maxLen;
  }

  /**
   * Greedy decoding of a batch of id rows (see checkSource) -> one array of ids per row (one array for a single
   * sequence), the tokens before the end token. `maxLen` (1..4096) caps the decoder steps, max_target_length by
   * default; on a model without an end token, a maxLen past max_target_length (untrained steps) is refused unless
   * `allowUntrainedLengths`. greedy.onnx in one call where the export has it, unless `twoGraph` (or the export has
   * none, or maxLen exceeds max_target_length): then the contract's loop over encoder.onnx + decoder_step.onnx. Both
   * give identical tokens. More than CHUNK_ROWS rows run as length-sorted chunks; the answers keep the rows' order.
   */
  async greedy(ort, source, options) {
    checkOrt(ort);
    const { twoGraph = false, allowUntrainedLengths = false, maxLen } = checkOptions(options, GREEDY_OPTIONS, "greedy");
    checkFlag(twoGraph, "twoGraph");
    const checked = this.checkSource(source, { allowUntrainedLengths });
    const steps = this._maxLen(maxLen, allowUntrainedLengths);
    const loop = twoGraph || !this.sessions.greedy || steps > this.maxTargetLength;
    const out = await this._inChunks(ort, checked, (src, batch) =>
      loop ? this._loop(ort, src, batch, steps) : this._fused(ort, src, batch, steps),
    );
    const stripped = out.map((row) => this.strip(row));
    return checked.single ? stripped[0] : stripped;
  }

  /**
   * Beam search of a batch of id rows (see checkSource), exactly the contract's "Beam search (normative)" over
   * encoder.onnx + decoder_step.onnx -> {tokens, scores}: per row the best beam's ids before the end token and its
   * score, log-probability / length ** lengthPenalty (for a single sequence one array and one number). `beamSize`
   * 1..1024 (default 4), `lengthPenalty` in [-10, 10] (default 1; 0 ranks by total log-probability); `maxLen` and
   * `allowUntrainedLengths` as in greedy. The tokens are the Python runtime's, except where two candidates differ only
   * by float64 rounding; the scores agree to rounding (the contract: ~1e-15 of the score in batches padded alike).
   * `nBest` N (1..beamSize): per row the N best final beams instead, best first, as arrays of N token arrays and of
   * N scores (Python's beam_search(..., n_best=N)).
   */
  async beamSearch(ort, source, options) {
    checkOrt(ort);
    const {
      beamSize = 4,
      lengthPenalty = 1,
      allowUntrainedLengths = false,
      maxLen,
      nBest,
    } = checkOptions(options, BEAM_OPTIONS, "beamSearch");
    const checked = this.checkSource(source, { allowUntrainedLengths });
    if (!Number.isInteger(beamSize) || beamSize < 1) {
      throw new InputError(`beamSize must be a positive integer, got ${describe(beamSize)}`);
    }
    if (beamSize > MAX_BEAM_SIZE) throw new InputError(`beamSize must be <= ${MAX_BEAM_SIZE}, got ${beamSize}`);
    if (typeof lengthPenalty !== "number" || !Number.isFinite(lengthPenalty)) {
      throw new InputError(`lengthPenalty must be a finite number, got ${describe(lengthPenalty)}`);
    }
    if (Math.abs(lengthPenalty) > MAX_LENGTH_PENALTY) {
      throw new InputError(
        `lengthPenalty must be in [-${MAX_LENGTH_PENALTY}, ${MAX_LENGTH_PENALTY}] (scores are log-probability / ` +
          `length ** lengthPenalty), got ${lengthPenalty}`,
      );
    }
    if (nBest !== undefined && (!Number.isInteger(nBest) || nBest < 1 || nBest > beamSize)) {
      throw new InputError(`nBest must be an integer in [1, beamSize (${beamSize})], got ${describe(nBest)}`);
    }
    const steps = this._maxLen(maxLen, allowUntrainedLengths);
    const chunkRows = Math.max(1, Math.min(CHUNK_ROWS, Math.floor(BEAM_CHUNK_ROWS / beamSize)));
    const out = await this._inChunks(
      ort,
      checked,
      (src, batch) => this._beam(ort, src, batch, steps, beamSize, lengthPenalty, nBest ?? 1),
      chunkRows,
    );
    const pick = (ranked, f) => (nBest === undefined ? f(ranked[0]) : ranked.map(f));
    const tokens = out.map((ranked) => pick(ranked, (beam) => this.strip(beam.tokens)));
    const scores = out.map((ranked) => pick(ranked, (beam) => beam.score));
    return checked.single ? { tokens: tokens[0], scores: scores[0] } : { tokens, scores };
  }

  // `run(sourceTensor, batch)` -> one answer per row, over a checked source: in one call up to `chunkRows` rows,
  // else over chunks of rows sorted by length, each cut to its longest row; the answers come back in the rows' order.
  async _inChunks(ort, { rows, batch, width, lengths }, run, chunkRows = CHUNK_ROWS) {
    if (batch <= chunkRows) return run(this._sourceTensor(ort, rows, batch, width), batch);
    const out = new Array(batch);
    const order = [...rows.keys()].sort((a, b) => lengths[a] - lengths[b]); // stable: ties keep their order
    for (let i = 0; i < batch; i += chunkRows) {
      const chunk = order.slice(i, i + chunkRows);
      const part = chunk.map((r) => rows[r]);
      const w = Math.max(...chunk.map((r) => lengths[r]));
      const answers = await run(this._sourceTensor(ort, part, part.length, w), part.length);
      chunk.forEach((r, k) => {
        out[r] = answers[k];
      });
    }
    return out;
  }

  async _fused(ort, src, batch, steps) {
    // max_len is an overridable initializer, and onnxruntime-node/-web feed graph inputs only (an extra feed is
    // silently dropped): the graph always runs its default, max_target_length. Greedy decoding is causal, so fewer
    // steps are a prefix of its answer; more steps take the two-graph loop (see greedy).
    const out = (await this.sessions.greedy.run({ source: src })).tokens;
    const n = out.dims[1];
    const keep = Math.min(n, steps);
    const rows = [];
    for (let r = 0; r < batch; r++) rows.push(Array.from(out.data.subarray(r * n, r * n + keep), Number));
    return rows;
  }

  // The encoder's outputs: the decoder state, by name.
  async _encode(src) {
    const encoded = await this.sessions.encoder.run({ source: src });
    const state = {};
    for (const name of this.encoderIO.outputs) state[name] = encoded[name];
    return state;
  }

  // One decoder_step.onnx call for `batch` rows (the contract's step rule: X_out becomes X, in `state` in place) ->
  // the logits (batch x targetVocabSize, row-major). Non-finite logits are a damaged model, never a silent answer.
  async _step(ort, token, state, batch, step) {
    const feeds = { token: new ort.Tensor("int64", token.slice(), [batch]) };
    for (const name of this.decoderIO.inputs.slice(1)) feeds[name] = state[name];
    const out = await this.sessions.decoder.run(feeds);
    for (const name of this.decoderIO.outputs) {
      if (name.endsWith(OUT_SUFFIX)) state[name.slice(0, -OUT_SUFFIX.length)] = out[name]; // X_out -> X
    }
    const width = out.logits.dims[1];
    if (width !== this.targetVocabSize) {
      throw new ModelFileError(
        `${this.label.decoder}: logits of width ${width}, its metadata says ${this.targetVocabSize} target ids`,
      );
    }
    const data = out.logits.data;
    const bad = data.findIndex((x) => !Number.isFinite(x));
    if (bad >= 0) {
      throw new ModelFileError(
        `${this.label.decoder}: non-finite logits (${data[bad]}) at step ${step}, row ${Math.floor(bad / width)}; ` +
          "the model is damaged",
      );
    }
    return data;
  }

  // The contract's greedy loop ("Greedy decoding"): argmax takes the first maximum, finished rows emit padding,
  // it stops early once every row has emitted the end token.
  async _loop(ort, src, batch, steps) {
    const state = await this._encode(src);
    const width = this.targetVocabSize;
    const token = new BigInt64Array(batch).fill(BigInt(this.startToken));
    const done = new Array(batch).fill(false);
    const rows = Array.from({ length: batch }, () => []);
    for (let step = 0; step < steps; step++) {
      const data = await this._step(ort, token, state, batch, step);
      for (let r = 0; r < batch; r++) {
        let best = 0;
        for (let v = 1; v < width; v++) if (data[r * width + v] > data[r * width + best]) best = v;
        if (done[r]) best = this.padToken;
        token[r] = BigInt(best);
        rows[r].push(best);
        if (this.eosToken !== null && best === this.eosToken) done[r] = true;
      }
      if (this.eosToken !== null && done.every(Boolean)) break;
    }
    return rows;
  }

  // The contract's beam search ("Beam search (normative)") over `batch` source rows with K beams each: row b*K + j of
  // the decoder state is beam j of source b. -> per source row its `n` best final beams, best first (ties: the lower
  // j, as Python's stable sort), each {tokens (the steps run, padding after the end token), score}.
  async _beam(ort, src, batch, steps, K, lengthPenalty, n) {
    const V = this.targetVocabSize;
    const pad = this.padToken;
    let state = gatherRows(ort, await this._encode(src), Array.from({ length: batch * K }, (_, i) => Math.floor(i / K)));
    const token = new BigInt64Array(batch * K).fill(BigInt(this.startToken));
    let score = Array.from({ length: batch * K }, (_, i) => (i % K === 0 ? 0 : -Infinity)); // beams start equal
    let length = new Array(batch * K).fill(0);
    let done = new Array(batch * K).fill(false);
    const parents = []; // per step: each new beam's row of the step before, and its token (followed back at the end:
    const picked = []; // copying whole histories every step was quadratic in the steps)
    const logp = new Float64Array(V);
    const cand = new Float64Array(K * V); // candidate i = j * V + token
    for (let step = 0; step < steps; step++) {
      const data = await this._step(ort, token, state, batch * K, step);
      const rows = new Array(batch * K); // row of the state each new beam continues
      const next = { score: [], length: [], done: [] };
      for (let b = 0; b < batch; b++) {
        for (let j = 0; j < K; j++) {
          const row = b * K + j;
          if (done[row]) {
            logp.fill(-Infinity);
            logp[pad] = 0; // a finished beam extends with padding only, its score unchanged
          } else {
            // log_softmax in float64, as the contract writes it
            let top = -Infinity;
            for (let v = 0; v < V; v++) top = Math.max(top, data[row * V + v]);
            let sum = 0;
            for (let v = 0; v < V; v++) sum += Math.exp(data[row * V + v] - top);
            const log = Math.log(sum);
            for (let v = 0; v < V; v++) logp[v] = data[row * V + v] - top - log;
          }
          for (let v = 0; v < V; v++) cand[j * V + v] = score[row] + logp[v];
        }
        topK(cand, K).forEach((i, j) => {
          const parent = b * K + Math.floor(i / V);
          const t = i % V;
          const row = b * K + j;
          rows[row] = parent;
          next.score[row] = cand[i];
          next.done[row] = done[parent] || (this.eosToken !== null && t === this.eosToken);
          next.length[row] = length[parent] + (done[parent] ? 0 : 1); // the end token counts, padding after it not
          token[row] = BigInt(t);
        });
      }
      ({ score, length, done } = next);
      parents.push(rows);
      picked.push(Array.from(token, Number));
      state = gatherRows(ort, state, rows);
      if (done.every(Boolean)) break;
    }
    const answers = [];
    for (let b = 0; b < batch; b++) {
      const finals = Array.from({ length: K }, (_, j) => {
        const row = b * K + j;
        return { j, final: lengthPenalty ? score[row] / Math.max(length[row], 1) ** lengthPenalty : score[row] };
      });
      // descending, stable; -Infinity beside -Infinity compares equal (their difference is NaN)
      finals.sort((x, y) => (x.final === y.final ? 0 : y.final - x.final || 0));
      answers.push(
        finals.slice(0, n).map(({ j, final }) => {
          const tokens = new Array(picked.length);
          for (let t = picked.length - 1, row = b * K + j; t >= 0; t--) {
            tokens[t] = picked[t][row];
            row = parents[t][row];
          }
          return { tokens, score: final };
        }),
      );
    }
    return answers;
  }

  // ---- text in, text out (format_version 2 text models) ----

  // toLowerCase, like Python's str.lower, applies Unicode's full default lower-casing (final sigma, dotted I).
  _norm(text, lowercase) {
    let t = this.meta.normalization === "NFC" ? text.normalize("NFC") : text;
    if (lowercase) t = t.toLowerCase();
    return t;
  }

  /**
   * Text -> source ids per the export's normalisation, case and tokenizer: one string gives one row (named `where`
   * in messages, "text" by default: an app names its own input, e.g. "line 3"), an array of strings right-padded rows
   * (named "texts[i]"). A text whose token count lies outside the trained source lengths is refused unless
   * `allowUntrainedLengths`. Messages are the Python runtime's encode_text's, word for word.
   */
  encodeText(text, options) {
    const { allowUntrainedLengths = false, where } = checkOptions(options, TEXT_OPTIONS, "encodeText");
    checkFlag(allowUntrainedLengths, "allowUntrainedLengths");
    if (where !== undefined && (typeof where !== "string" || where === "")) {
      throw new TypeError(`where must be a non-empty string, got ${JSON.stringify(where)}`);
    }
    if (!this.isText) throw new InputError("this model reads token ids, not text (no source_tokens in its metadata)");
    const single = typeof text === "string";
    if (!single && !Array.isArray(text)) {
      throw new TypeError(`text must be a string or an array of strings, got ${typeof text}`);
    }
    if (!single && where !== undefined) {
      throw new InputError("encodeText: where names one text; a batch's are texts[i]");
    }
    const lines = single ? [text] : text;
    const rows = lines.map((line, i) => {
      const name = single ? (where ?? "text") : `texts[${i}]`;
      if (typeof line !== "string") throw new TypeError(`${name}: texts must be strings, got ${typeof line}`);
      if (line === "") throw new InputError(`${name}: empty text`);
      checkPrintable(line, name);
      const read = this._norm(line, this.meta.source_lowercase === "1");
      const tokenizer = this.meta.source_tokenizer;
      const tokens = splitText(read, tokenizer);
      if (tokens.length === 0) {
        throw new InputError(`${name}: no tokens (only whitespace; the ${tokenizer} tokenizer splits on it)`);
      }
      const ids = tokens.map((tok, j) => {
        const id = this.sourceIds.get(tok);
        if (id !== undefined && id >= this.minToken) return id; // reserved ids (<pad>, </s>) are not typed in
        if (this.unkToken !== null) return this.unkToken;
        const token = `${shown(tok)}${ALL_PY_SPACE.test(tok) ? SPACE_HINT : ""}`; // as the Python runtime's Vocab.encode
        throw new InputError(`${name}: unknown token ${token} at position ${j + 1}${this._asRead(line, read)}`);
      });
      const unit = tokenizer === "char" ? "character" : "token";
      if (ids.length > MAX_SOURCE_TOKENS) {
        const count = `${ids.length.toLocaleString("en-US")} ${unit}s`;
        throw new InputError(`${name}: ${count}; at most ${MAX_SOURCE_TOKENS.toLocaleString("en-US")} are decoded`);
      }
      if (!allowUntrainedLengths && (ids.length < this.minSourceLength || ids.length > this.sourceLength)) {
        throw new InputError(this._untrainedLength(name, ids.length, unit, this._asRead(line, read)));
      }
      return ids;
    });
    if (single) return rows[0];
    const width = Math.max(0, ...rows.map((r) => r.length));
    return rows.map((r) => [...r, ...new Array(width - r.length).fill(this.padToken)]);
  }

  // "" when the model reads `text` as typed; else which text it read and why (as the Python runtime's TextSpec.as_read).
  _asRead(text, read) {
    if (read === text) return "";
    const normal = this.meta.normalization === "NFC" ? text.normalize("NFC") : text;
    const how = [normal !== text && "NFC", read !== normal && "lowercased"].filter(Boolean).join(" and ");
    return ` of ${shown(read)}, the text as the model reads it (${how})`; // cut: a message, not the input
  }

  /** Decoded ids (a row as greedy returns it) -> text. */
  decodeText(ids) {
    return this.joinTokens(this.decodeTokens(ids));
  }

  /** Target tokens -> text, joined as the target tokenizer splits (char: nothing between, space: one space). */
  joinTokens(tokens) {
    return tokens.join(this.meta.target_tokenizer === "char" ? "" : " ");
  }

  /** Decoded ids (a row as greedy returns it) -> its target tokens, up to the end token. */
  decodeTokens(ids) {
    if (!this.isText) throw new InputError("this model writes token ids, not text (no target_tokens in its metadata)");
    const out = [];
    for (const id of this.strip(ids)) {
      if (id === this.padToken) break;
      if (!(id >= 0 && id < this.targetTokens.length)) {
        throw new InputError(`decodeText: id ${id} is not in the target vocabulary (0 to ${this.targetTokens.length - 1})`);
      }
      out.push(this.targetTokens[id]);
    }
    return out;
  }

  /**
   * A reference text as a prediction is compared with it: normalised, cased and split as the target side (so
   * "W ER1  L D " is the tokens W ER1 L D, as Python's decode scores it).
   */
  referenceTokens(text) {
    return splitText(this._norm(text, this.meta.target_lowercase === "1"), this.meta.target_tokenizer);
  }

  /** Text (one string, or an array of lines) -> decoded text (greedy; options as greedy's). */
  async greedyText(ort, lines, options) {
    const { allowUntrainedLengths = false } = checkOptions(options, GREEDY_OPTIONS, "greedyText");
    const rows = await this.greedy(ort, this.encodeText(lines, { allowUntrainedLengths }), options);
    return typeof lines === "string" ? this.decodeText(rows) : rows.map((row) => this.decodeText(row));
  }

  /**
   * Text (one string, or an array of lines) -> decoded text by beam search (options as beamSearch's; with `nBest`,
   * an array of up to N distinct texts for each, best first: distinctAnswers).
   */
  async beamText(ort, lines, options) {
    const { allowUntrainedLengths = false, nBest } = checkOptions(options, BEAM_OPTIONS, "beamText");
    const { tokens, scores } = await this.beamSearch(ort, this.encodeText(lines, { allowUntrainedLengths }), options);
    if (nBest === undefined) {
      return typeof lines === "string" ? this.decodeText(tokens) : tokens.map((row) => this.decodeText(row));
    }
    const texts = (ranked, s) => distinctAnswers(ranked, s).map((row) => this.decodeText(row));
    return typeof lines === "string" ? texts(tokens, scores) : tokens.map((ranked, i) => texts(ranked, scores[i]));
  }
}

/**
 * One source's ranked answers and scores, as beamSearch({nBest}) gives them -> its distinct answers, best first: an
 * answer a better beam gave already is left out (one beam ended by padding, another by the end token), and so is a
 * beam of score -Infinity (a filler of a search with fewer candidates than beams); the best is always kept. As the
 * Python runtime's OnnxSeq2Seq.distinct.
 */
export function distinctAnswers(tokens, scores) {
  const out = [];
  tokens.forEach((answer, j) => {
    const seen = out.some((kept) => kept.length === answer.length && kept.every((t, i) => t === answer[i]));
    if ((Number.isFinite(scores[j]) || out.length === 0) && !seen) out.push(answer);
  });
  return out;
}

// Indices of the K largest values, largest first; equal values in index order (a stable descending sort's first K),
// as the contract ranks beam candidates. One pass with a sorted list of K: no sort of all K * V candidates.
function topK(values, K) {
  const top = [];
  for (let i = 0; i < values.length; i++) {
    const x = values[i];
    if (top.length === K && !(x > values[top[K - 1]])) continue; // a tie with the K-th keeps the earlier index
    let lo = 0;
    let hi = top.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (values[top[mid]] >= x) lo = mid + 1;
      else hi = mid;
    }
    top.splice(lo, 0, i);
    if (top.length > K) top.pop();
  }
  return top;
}

// Rows `rows` of every state tensor along its batch axis (BATCH_AXIS): beam search repeats and reorders beams with it.
function gatherRows(ort, state, rows) {
  const out = {};
  for (const [name, tensor] of Object.entries(state)) {
    const axis = BATCH_AXIS[name];
    const dims = tensor.dims;
    const outer = dims.slice(0, axis).reduce((a, b) => a * b, 1);
    const inner = dims.slice(axis + 1).reduce((a, b) => a * b, 1);
    const n = dims[axis];
    const data = new tensor.data.constructor(outer * rows.length * inner); // 'bool' comes as a Uint8Array
    for (let o = 0; o < outer; o++) {
      rows.forEach((r, i) => {
        const from = (o * n + r) * inner;
        data.set(tensor.data.subarray(from, from + inner), (o * rows.length + i) * inner);
      });
    }
    out[name] = new ort.Tensor(tensor.type, data, [...dims.slice(0, axis), rows.length, ...dims.slice(axis + 1)]);
  }
  return out;
}
