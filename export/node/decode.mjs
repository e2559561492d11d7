#!/usr/bin/env node
// decode.mjs: decode stdin lines (greedy or beam) with a lit-seq2seq export on onnxruntime-node (the Node consumer).
//
//   node export/node/decode.mjs MODEL_DIR [--two-graph] [--allow-untrained-lengths] [--batch-size N]
//                                [--beam-size K [--length-penalty X] [--n-best N]] [--jsonl] [--skip-bad-lines]
//                                [--with-source] [SEQUENCE ...]   (no SEQUENCE: the lines of stdin)
//
// --beam-size K (K > 1) decodes by beam search over the two step graphs (the contract's "Beam search"), with the Python
// runtime's tokens; 1 (the default) is greedy.
// One source per line: space-separated token ids, or text for a text model (format_version 2 with source_tokens).
// "SOURCE<TAB>EXPECTED" lines (what `lit-seq2seq sample` prints) are scored too: exact match (and a text model's token
// error rate) goes to stderr, counted and printed as `lit-seq2seq decode` does. One decoded line out per line in (for
// a text model, adjacent lines of one source are one source, as several references), printed a batch at a time;
// --with-source prints SOURCE<TAB>DECODING (the source as read), as Python's decode --with_source; --n-best N prints
// the N best beams of each source, best first, as --n_best does.
// --jsonl: each line is a JSON object {"source": ..., "target": ...} ("target" optional, other keys ignored), read as
// the line SOURCE<TAB>TARGET, with the checks and messages of `lit-seq2seq decode --jsonl` (why a line is not JSON is
// worded by JSON.parse, not by Python's json). Bad input (a bad line, a missing/altered/mixed model file, a bad flag) ->
// one line on stderr and exit code 2, after every line before a bad line was printed; never a stack trace.

import { statSync } from "node:fs";
import { readFile, stat } from "node:fs/promises";
import { join } from "node:path";
import {
  DECODER_FILE,
  ENCODER_FILE,
  GREEDY_FILE,
  InputError,
  MAX_BEAM_SIZE,
  MAX_LENGTH_PENALTY,
  ModelFileError,
  PY_SPACE,
  SHOWN_CHARS,
  checkPrintable,
  distinctAnswers,
  loadModel,
  shown,
} from "../js/lit_seq2seq.mjs";

const USAGE =
  "usage: node decode.mjs MODEL_DIR (or --model-dir MODEL_DIR) [--two-graph] [--allow-untrained-lengths] " +
  "[--batch-size N] [--beam-size K [--length-penalty X] [--n-best N]] [--jsonl] [--skip-bad-lines] [--with-source] " +
  "[--threads N] [--] [SEQUENCE ...] (no SEQUENCE: the lines of stdin; the flags also take Python's underscores)";
// The module's refusal of an untrained length names its option and this command's flag: here the flag alone
const RUNTIME_HINT = "pass allowUntrainedLengths: true / --allow-untrained-lengths";
// what argparse reads as a positional argument though it starts with "-": a negative number (and "-" alone)
const NEGATIVE_NUMBER = /^-(\d+|\d*\.\d+)?$/;

class UsageError extends Error {}

// A word as a POSIX shell reads it back, as Python's shlex.quote writes it
function shellQuote(word) {
  return /^[\w@%+=:,./-]+$/.test(word) ? word : `'${word.replace(/'/g, `'"'"'`)}'`;
}

function parseArgs(args) {
  // --flag=value is --flag value, as Python's argparse reads it (not after "--": the rest are sources as given)
  const end = args.includes("--") ? args.indexOf("--") : args.length;
  const argv = args.slice(0, end).flatMap((arg) => {
    const eq = arg.indexOf("=");
    return arg.startsWith("--") && eq > 2 ? [arg.slice(0, eq), arg.slice(eq + 1)] : [arg];
  });
  const options = {
    modelDir: null,
    threads: 1, // onnxruntime intra-op threads, as Python's decode --threads
    twoGraph: false,
    allowUntrainedLengths: false,
    batchSize: 2048, // lines read, decoded (in length-sorted chunks) and printed together, as Python's decode
    beamSize: 1,
    lengthPenalty: null,
    sequences: [], // texts or id lines given as arguments, decoded instead of stdin (as Python's decode takes them)
    jsonl: false, // each line one JSON object {"source": ..., "target": ...}, as Python's decode --jsonl
    skipBadLines: false, // bad lines skipped and counted, as Python's decode --skip_bad_lines
    withSource: false, // SOURCE<TAB>DECODING lines out, as Python's decode --with_source
    nBest: 1, // beams printed per source, as Python's decode --n_best
  };
  const positionals = []; // MODEL_DIR first unless --model-dir names it, then the sources, wherever they stand
  const positional = (arg) => positionals.push(arg);
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--two-graph" || arg === "--two_graph") options.twoGraph = true;
    else if (arg === "--jsonl") options.jsonl = true;
    else if (arg === "--skip-bad-lines" || arg === "--skip_bad_lines") options.skipBadLines = true;
    else if (arg === "--with-source" || arg === "--with_source") options.withSource = true;
    else if (arg === "--allow-untrained-lengths" || arg === "--allow_untrained_lengths")
      options.allowUntrainedLengths = true;
    else if (arg === "--batch-size" || arg === "--batch_size") {
      const value = argv[++i];
      if (!/^\d+$/.test(value ?? "") || Number(value) < 1) {
        throw new UsageError(`--batch-size must be an integer >= 1, got ${JSON.stringify(value ?? null)}`);
      }
      options.batchSize = Number(value);
    } else if (arg === "--threads") {
      const value = argv[++i];
      if (!/^\d+$/.test(value ?? "") || Number(value) < 1) {
        throw new UsageError(`--threads must be an integer >= 1, got ${JSON.stringify(value ?? null)}`);
      }
      options.threads = Number(value);
    } else if (arg === "--model-dir" || arg === "--model_dir") {
      const value = argv[++i];
      if (value === undefined) throw new UsageError(`${arg} needs a folder; ${USAGE}`);
      options.modelDir = value; // the last one given, as argparse takes a repeated flag
    } else if (arg === "--beam-size" || arg === "--beam_size") {
      const value = argv[++i];
      if (!/^\d+$/.test(value ?? "") || Number(value) < 1 || Number(value) > MAX_BEAM_SIZE) {
        throw new UsageError(
          `--beam-size must be an integer in [1, ${MAX_BEAM_SIZE}], got ${JSON.stringify(value ?? null)}`,
        );
      }
      options.beamSize = Number(value);
    } else if (arg === "--n-best" || arg === "--n_best") {
      const value = argv[++i];
      if (!/^\d+$/.test(value ?? "")) {
        throw new UsageError(`--n-best must be an integer, got ${JSON.stringify(value ?? null)}`);
      }
      options.nBest = Number(value);
    } else if (arg === "--length-penalty" || arg === "--length_penalty") {
      const value = argv[++i];
      const number = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$/.test(value ?? "") ? Number(value) : NaN;
      if (!(Math.abs(number) <= MAX_LENGTH_PENALTY)) {
        const range = `[-${MAX_LENGTH_PENALTY}, ${MAX_LENGTH_PENALTY}]`;
        throw new UsageError(`--length-penalty must be a number in ${range}, got ${JSON.stringify(value ?? null)}`);
      }
      options.lengthPenalty = number;
    } else if (arg === "-h" || arg === "--help") {
      process.stdout.write(`${USAGE}\n`);
      process.exit(0);
    } else if (arg.startsWith("-") && !NEGATIVE_NUMBER.test(arg) && !arg.includes(" ")) {
      // (argparse reads "-a b", with a space, as a positional argument too)
      throw new UsageError(`unknown option ${arg}; ${USAGE}`);
    } else positional(arg);
  }
  args.slice(end + 1).forEach(positional);
  if (options.modelDir === null) options.modelDir = positionals.shift() ?? null;
  options.sequences = positionals;
  if (options.modelDir === null) throw new UsageError(`MODEL_DIR missing; ${USAGE}`);
  if (options.lengthPenalty !== null && options.beamSize === 1) {
    // greedy has no scores to rank: the flag would change nothing
    throw new UsageError("--length-penalty applies to beam search only: add --beam-size K (K > 1)");
  }
  if (options.twoGraph && options.beamSize > 1) {
    throw new UsageError("--two-graph applies to greedy only: beam search always runs the two graphs");
  }
  if (options.nBest !== 1 && options.beamSize === 1) {
    throw new UsageError("--n-best applies to beam search only: add --beam-size K (K >= N)"); // greedy has one answer
  }
  if (options.nBest < 1 || options.nBest > options.beamSize) {
    // the final beams are all there is to rank
    throw new UsageError(`--n-best must be in [1, --beam-size (${options.beamSize})], got ${options.nBest}`);
  }
  return options;
}

async function readModelFile(dir, name, required) {
  const path = join(dir, name);
  try {
    return new Uint8Array(await readFile(path));
  } catch (error) {
    if (error.code === "ENOENT" && !required) return undefined; // exports older than greedy.onnx
    if (error.code === "ENOENT") {
      throw new ModelFileError(
        `${path}: missing; a model folder holds ${ENCODER_FILE} and ${DECODER_FILE} written by \`lit-seq2seq export\``,
      );
    }
    throw new ModelFileError(`${path}: cannot read it (${error.code ?? error.message})`);
  }
}

// stdin as lines, each decoded strictly as UTF-8 (a byte that is not UTF-8 is bad input, not a silent U+FFFD). Split
// on the byte 0x0A first: it never occurs inside a UTF-8 sequence, so chunk boundaries cannot cut a character.
async function* stdinLines() {
  const utf8 = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true }); // a BOM is dropped at the start only
  let number = 0;
  const decode = (bytes) => {
    let text;
    try {
      text = utf8.decode(bytes);
    } catch {
      const bom = number === 0 ? `${bytes[0]},${bytes[1]}` : ""; // Windows' "Unicode" text starts FF FE
      const why = bom === "255,254" || bom === "254,255" ? " (a UTF-16 byte order mark)" : "";
      throw new InputError(`stdin line ${number + 1}: not UTF-8 text${why}; save it as UTF-8`);
    }
    number++;
    if (number === 1 && text.startsWith("\ufeff")) text = text.slice(1);
    return text.endsWith("\r") ? text.slice(0, -1) : text;
  };
  let pending = []; // pieces of a line that spans chunks
  for await (const chunk of process.stdin) {
    let start = 0;
    for (let nl = chunk.indexOf(10); nl >= 0; nl = chunk.indexOf(10, start)) {
      yield decode(Buffer.concat([...pending, chunk.subarray(start, nl)]));
      pending = [];
      start = nl + 1;
    }
    if (start < chunk.length) pending.push(chunk.subarray(start));
  }
  if (pending.length) yield decode(Buffer.concat(pending));
}

// Levenshtein distance between two token arrays (insertions, deletions and substitutions cost 1).
function editDistance(a, b) {
  let previous = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const current = [i];
    for (let j = 1; j <= b.length; j++) {
      current.push(Math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (a[i - 1] === b[j - 1] ? 0 : 1)));
    }
    previous = current;
  }
  return previous[b.length];
}

function parseIds(text, where) {
  const parts = text.split(PY_SPACE).filter(Boolean); // Python's whitespace and ASCII digits, as its decode reads ids
  if (!parts.every((p) => /^[+-]?\d+$/.test(p))) {
    // the line shown cut, as in Python: a 50 MB line made a 50 MB "one line" error
    throw new InputError(`${where}: ${shown(text.trim())} is not a list of space-separated integer token ids`);
  }
  const ids = parts.map(Number);
  const at = ids.findIndex((t) => !Number.isSafeInteger(t));
  if (at >= 0) {
    const token = parts[at].length <= SHOWN_CHARS ? parts[at] : shown(parts[at]);
    throw new InputError(`${where}: token ${token} is out of range`);
  }
  return ids;
}

// --jsonl: what Python's decode --jsonl reads of a line (lit_seq2seq/pairfiles.py parse_jsonl_line, the reader of
// training's .jsonl files), with its messages: {source, reference}, reference null without "target".
const JSONL_HINT = "; --jsonl reads one JSON object per line (SOURCE<TAB>REFERENCE lines: leave --jsonl out)";
const ARRAY_HINT = "; JSON Lines: one object per line, not a JSON array"; // a line holding a JSON array, or its start
const LEADING_SPACE = new RegExp(`^(?:${PY_SPACE.source})`, "u"); // Python's str.lstrip()
const ALL_SPACE = new RegExp(`^(?:${PY_SPACE.source})?$`, "u"); // Python's `not text.strip()`

// A value as Python's json.dumps writes it (ASCII only, ", " and ": " between items), for messages. A number is
// JavaScript's: 1.0 (Python's float) reads as 1.
function pyDumps(value) {
  if (typeof value === "string") {
    const escape = (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`;
    return JSON.stringify(value).replace(/[\u007f-\uffff]/g, escape); // surrogate pairs as two escapes, as Python
  }
  if (Array.isArray(value)) return `[${value.map(pyDumps).join(", ")}]`;
  if (value !== null && typeof value === "object") {
    return `{${Object.entries(value)
      .map(([k, v]) => `${pyDumps(k)}: ${pyDumps(v)}`)
      .join(", ")}}`;
  }
  return String(value); // null, true, false, a number
}

// A line that looks like JSON Lines, read without --jsonl, says so (as Python's decode: cli._hint_json).
function hintJson(message, line, jsonl) {
  const unreadable = message.includes("unknown token") || message.includes("is not a list of space-separated");
  if (jsonl || !unreadable || !line.replace(LEADING_SPACE, "").startsWith("{")) return message;
  return `${message} (decode reads SOURCE or SOURCE<TAB>REFERENCE lines; for JSON Lines add --jsonl)`;
}

// The first key, in order, that appears more than once (a count per key: indexOf per key took 4.9 s on 50,000 keys).
function firstRepeated(keys) {
  const counts = new Map();
  for (const key of keys) counts.set(key, (counts.get(key) ?? 0) + 1);
  return keys.find((key) => counts.get(key) > 1);
}

// The top-level keys of valid JSON text, in order. JSON.parse keeps the last of a repeated key silently; Python's
// reader refuses it, naming, in the first object to close that has one, its first repeated key.
function objectKeys(text, where) {
  const stack = []; // per open container: its keys (an object) or null (an array)
  let top = [];
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (c === '"') {
      let end = i + 1;
      while (text[end] !== '"') end += text[end] === "\\" ? 2 : 1;
      const keys = stack.at(-1);
      if (keys) {
        let next = end + 1; // a string in an object is a key when a colon follows it
        while (text[next] === " " || text[next] === "\t" || text[next] === "\n" || text[next] === "\r") next++;
        if (text[next] === ":") keys.push(JSON.parse(text.slice(i, end + 1)));
      }
      i = end;
    } else if (c === "{" || c === "[") stack.push(c === "{" ? [] : null);
    else if (c === "}" || c === "]") {
      const keys = stack.pop();
      const twice = keys ? firstRepeated(keys) : undefined; // keys: null for an array
      if (twice !== undefined) throw new InputError(`${where}: the key "${twice}" appears twice in one object`);
      if (keys && stack.length === 0) top = keys;
    }
  }
  return top;
}

function parseJsonlLine(line, where) {
  let row;
  try {
    row = JSON.parse(line);
  } catch (error) {
    const hint = line.replace(LEADING_SPACE, "").startsWith("[")
      ? ARRAY_HINT
      : JSONL_HINT;
    throw new InputError(`${where}: bad JSON (${error.message})${hint}`);
  }
  const keys = objectKeys(line, where);
  if (row === null || typeof row !== "object" || Array.isArray(row)) {
    const array = Array.isArray(row) ? ARRAY_HINT : "";
    throw new InputError(`${where}: expected a JSON object {"source": ..., "target": ...}${array}`);
  }
  const alone = !Object.hasOwn(row, "target");
  for (const key of alone ? ["source"] : ["source", "target"]) {
    if (!Object.hasOwn(row, key)) {
      const has = keys.slice(0, 6).map(pyDumps).join(", ") || "none";
      throw new InputError(`${where}: missing key "${key}" (it has ${has}; the keys read are "source", "target")`);
    }
    const value = row[key];
    if (typeof value !== "string") {
      const listed = Array.isArray(value) ? `; one string ("2 3", "AH BE"); several ${key}s go on lines of their own` : "";
      throw new InputError(`${where}: "${key}" must be a string, got ${pyDumps(value).slice(0, 40)}${listed}`);
    }
    if (value === "") throw new InputError(`${where}: empty ${key}`);
    if (value.includes("\n") || value.includes("\r")) {
      throw new InputError(`${where}: the ${key} holds a line break; a pair is one line of text`);
    }
    try {
      checkPrintable(value, "");
    } catch (error) {
      throw new InputError(`${where}${error.message.replace(" at character ", ` in the ${key} at character `)}`);
    }
  }
  if (!alone && ALL_SPACE.test(row.target)) throw new InputError(`${where}: empty target (no tokens)`);
  return { source: row.source, reference: alone ? null : row.target };
}

// Resolves once stdout took the text (or its reader left: `| head` ends quietly, exit code 0).
function write(text) {
  return new Promise((resolve) => {
    if (process.stdout.write(text)) resolve();
    else process.stdout.once("drain", resolve);
  });
}

// onnxruntime-node 1.30 crashes (a segmentation fault inside InferenceSession.create) once the process's command line
// passes ~28 KB, measured here: a long argument list is refused before it loads, naming stdin.
const MAX_ARGV_BYTES = 16384;

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const argvBytes = process.argv.reduce((n, arg) => n + Buffer.byteLength(arg) + 1, 0);
  if (argvBytes > MAX_ARGV_BYTES) {
    const size = argvBytes.toLocaleString("en-US");
    throw new UsageError(
      `the command line holds ${size} bytes, over the ${MAX_ARGV_BYTES.toLocaleString("en-US")} that are safe ` +
        "(onnxruntime-node crashes past ~28 KB): give long or many sequences on stdin",
    );
  }
  let ort;
  try {
    ort = (await import("onnxruntime-node")).default;
  } catch {
    throw new UsageError("onnxruntime-node is not installed: run `npm ci --ignore-scripts --prefix export/node`");
  }
  // Node 18 (Debian 12's) has Web Crypto only as node:crypto's webcrypto, not as a global; the module wants the global.
  if (!globalThis.crypto?.subtle) globalThis.crypto = (await import("node:crypto")).webcrypto;
  const dir = options.modelDir;
  const found = await stat(dir).catch(() => null);
  if (found?.isFile()) {
    throw new ModelFileError(
      `model_dir ${dir}: a file, not an export folder; \`lit-seq2seq export --ckpt_path CKPT --output_dir DIR\` writes one from a checkpoint`,
    );
  }
  if (!found?.isDirectory()) throw new ModelFileError(`model_dir ${dir}: no such folder`);
  const files = {
    encoder: await readModelFile(dir, ENCODER_FILE, true),
    decoder: await readModelFile(dir, DECODER_FILE, true),
    greedy: await readModelFile(dir, GREEDY_FILE, false),
  };
  const sessionOptions = { intraOpNumThreads: options.threads, interOpNumThreads: 1 };
  const model = await loadModel(ort, files, { folder: dir.replace(/\/+$/, ""), sessionOptions });
  const { twoGraph, allowUntrainedLengths, sequences } = options;
  // as Python's decode: an argument naming a file is decoded as a text, and said (a model with <unk> answered it)
  const isFile = (arg) => {
    try {
      return statSync(arg).isFile();
    } catch {
      return false; // as Python's os.path.isfile: no such file, a name too long, a NUL in it
    }
  };
  const named = sequences.findIndex(isFile);
  if (named >= 0) {
    const arg = sequences[named];
    const command = ["node", process.argv[1], dir, ...(options.jsonl ? ["--jsonl"] : [])].map(shellQuote).join(" ");
    process.stderr.write(
      `note: argument ${named + 1} is the name of a file, ${shown(arg)}, decoded as a text; decode reads a file's ` +
        `lines from stdin: ${command} < ${shellQuote(arg)}\n`,
    );
  }
  const label = sequences.length ? "argument" : "line"; // what messages count, as in Python's decode
  if (!sequences.length && process.stdin.isTTY) {
    options.batchSize = 1; // a person typing: each line answered as it is entered (Python's cli.TERMINAL_NOTE)
    process.stderr.write(
      "decode: reading lines typed here, each decoded as it is entered (one with a reference once the next line " +
        "comes, as more references of its source may follow); end with Ctrl-D\n",
    );
  }

  // As Python's decode: an id line is scored on its own (its reference cut at the end token); a text model's adjacent
  // SOURCE<TAB>REFERENCE lines of one source are one source (one output line), and each distinct source is scored
  // once, right when its prediction equals any reference of all its lines.
  let batch = []; // {ids, text, references, where}
  const emptyAnswers = []; // sources decoded to an empty answer (their first lines), noted as Python's decode
  let pending = null; // the last source read: more reference lines of it may follow
  // text model: source ids -> {prediction, references: reference text -> its tokens}; each distinct reference once
  // (a repeat changes no score, and a common word given 50,000 times over would hold 50,000)
  const groups = new Map();
  let scored = 0;
  let hits = 0;
  const decodeBatch = async () => {
    if (batch.length === 0) return;
    const width = Math.max(...batch.map((s) => s.ids.length));
    const source = batch.map((s) => [...s.ids, ...new Array(width - s.ids.length).fill(model.padToken)]);
    const { beamSize, lengthPenalty, nBest } = options;
    // per source its answer, or up to nBest distinct ones, best first (as Python's decode)
    let ranked;
    if (beamSize === 1) {
      ranked = (await model.greedy(ort, source, { twoGraph, allowUntrainedLengths })).map((row) => [row]);
    } else {
      const beams = await model.beamSearch(ort, source, {
        beamSize,
        lengthPenalty: lengthPenalty ?? 1,
        allowUntrainedLengths,
        nBest,
      });
      ranked = beams.tokens.map((rows, i) => distinctAnswers(rows, beams.scores[i]));
    }
    const show = (row) => (model.isText ? model.joinTokens(model.decodeTokens(row)) : row.join(" "));
    const shown = ranked.map((rows) => rows.map(show)); // each source's answers as printed
    const lines = shown.flatMap((rows, i) => (options.withSource ? rows.map((d) => `${batch[i].text}\t${d}`) : rows));
    await write(lines.map((line) => `${line}\n`).join(""));
    shown.forEach((rows, i) => {
      if (rows.includes("")) emptyAnswers.push(batch[i].where);
    });
    const tokens = model.isText ? ranked.map((rows) => model.decodeTokens(rows[0])) : null;
    const out = shown.map((rows) => rows[0]); // the best, scored
    batch.forEach((s, i) => {
      if (s.references === null) return;
      if (!model.isText) {
        scored++;
        if (out[i] === s.references[0]) hits++;
        return;
      }
      const key = s.ids.join(" ");
      if (!groups.has(key)) groups.set(key, { prediction: tokens[i], references: new Map() });
      const references = groups.get(key).references;
      for (const r of s.references) if (!references.has(r)) references.set(r, model.referenceTokens(r));
    });
    batch = [];
  };
  const finishPending = async () => {
    if (pending === null) return;
    batch.push(pending);
    pending = null;
    if (batch.length === options.batchSize) await decodeBatch();
  };

  let number = 0;
  let unscored = 0;
  const unknown = []; // sources with a token read as <unk> (a model trained with --data.unknown_source unk)
  let blank = 0; // empty lines of stdin held back: at its end they are dropped, as Python's decode drops them
  const bad = []; // with --skip-bad-lines: the messages of the lines skipped
  // as Python's decode: a text model's empty line is an empty text, an id model's an empty sequence
  const empty = options.jsonl
    ? `empty line${JSONL_HINT}`
    : model.isText
      ? "empty text"
      : "source: empty sequence (source_len is 0)";

  // One non-empty line: queued for decoding, or a reference more of the source before it; an InputError if bad.
  async function readLine(line) {
    let tab = line.indexOf("\t");
    let [sourceText, target] = tab < 0 ? [line, ""] : [line.slice(0, tab), line.slice(tab + 1)];
    if (options.jsonl) {
      // the line SOURCE<TAB>TARGET (or SOURCE): exact, as neither text may hold a tab or a line break
      const row = parseJsonlLine(line, `${label} ${number}`);
      [sourceText, target, tab] = [row.source, row.reference ?? "", row.reference === null ? -1 : row.source.length];
    }
    const same = model.isText && tab >= 0 && pending?.references && pending.text === sourceText;
    let source = null;
    let reference = null;
    try {
      if (!same) {
        source = model.isText
          ? model.encodeText(sourceText, { allowUntrainedLengths, where: `${label} ${number}` })
          : parseIds(sourceText, `${label} ${number}`);
        if (source.length === 0) throw new InputError("source: empty sequence (source_len is 0)"); // as Python's
        model.checkSource(source, { allowUntrainedLengths });
      }
      if (tab >= 0) {
        // as Python's decode: a tab with nothing after it is a mistake, not a line without a reference
        if (target.trim() === "") throw new InputError("empty reference after the tab");
        checkPrintable(target, `${label} ${number} (reference)`); // a second tab too: a column it would take in
        reference = model.isText ? target : model.strip(parseIds(target, `${label} ${number} (expected)`)).join(" ");
      }
    } catch (error) {
      if (!(error instanceof InputError)) throw error;
      const where = error.message.startsWith(`${label} `) ? "" : `${label} ${number}: `;
      const message = error.message.replace(RUNTIME_HINT, "pass --allow-untrained-lengths"); // the flag alone
      throw new InputError(hintJson(where + message, line, options.jsonl));
    }
    if (same) {
      pending.references.push(reference); // one more reference of the source just read
      return;
    }
    await finishPending();
    pending = {
      ids: source,
      text: sourceText,
      references: reference === null ? null : [reference],
      where: `${label} ${number}`,
    };
    if (reference === null) unscored++;
    if (model.isText && model.unkToken !== null && source.some((id) => Number(id) === model.unkToken)) {
      unknown.push(`${label} ${number}`);
    }
    if (reference === null) await finishPending(); // no reference lines can follow it: into the batch now
  }

  try {
    for await (const line of sequences.length ? sequences : stdinLines()) {
      if (line === "" && !sequences.length) {
        blank++;
        continue;
      }
      // the empty lines held back, then an empty argument (refused where it stands, even the last one): bad lines
      for (blank += line === "" ? 1 : 0; blank > 0; blank--) {
        number++;
        if (!options.skipBadLines) throw new InputError(`${label} ${number}: ${empty}`);
        bad.push(`${label} ${number}: ${empty}`);
      }
      if (line === "") continue;
      number++;
      try {
        await readLine(line);
      } catch (error) {
        if (!(error instanceof InputError) || !options.skipBadLines) throw error;
        bad.push(error.message); // nothing printed for it, pending sources untouched
      }
    }
  } catch (error) {
    if (error instanceof InputError) {
      await finishPending(); // every line before a bad one is printed, none after it
      await decodeBatch();
    }
    throw error;
  }

  await finishPending();
  await decodeBatch();
  // Token error rate as Python's metrics.score: the edit distance to the closest reference (the first of the fewest
  // errors) over that reference's length, summed over the sources.
  let errors = 0;
  let length = 0;
  for (const group of groups.values()) {
    let best = null;
    let fewest = Infinity;
    for (const reference of group.references.values()) {
      const distance = editDistance(group.prediction, reference);
      if (distance < fewest) [best, fewest] = [reference, distance];
    }
    scored++;
    if (fewest === 0) hits++;
    errors += fewest;
    length += best.length;
  }
  if (scored) {
    const pct = (x) => `${(100 * x).toFixed(2)}%`;
    const note = unscored ? `; ${unscored} ${label}${unscored === 1 ? "" : "s"} without a reference not scored` : "";
    const text = !model.isText
      ? ""
      : ` (WER ${pct(1 - hits / scored)}); token error rate: ${
          length ? `${errors}/${length} = ${pct(errors / length)}` : "n/a (references without tokens)"
        }`;
    process.stderr.write(`exact match: ${hits}/${scored} = ${pct(hits / scored)}${text}${note}\n`);
  }
  if (unknown.length) {
    const first = `(the first: ${unknown[0]})`;
    process.stderr.write(`${unknown.length} source(s) held tokens the model does not know, each read as <unk> ${first}\n`);
  }
  if (emptyAnswers.length) {
    const printed = options.withSource ? "nothing after the tab" : "an empty line";
    const first = `(the first: ${emptyAnswers[0]})`;
    process.stderr.write(`${emptyAnswers.length} source(s) had an empty answer, printed as ${printed} ${first}\n`);
  }
  if (number === 0) {
    // (arguments are never none: without any, decode reads stdin); Python's cli.NO_INPUT_NOTE
    const hint = "give sources as arguments, or as lines on stdin";
    process.stderr.write(`decode: stdin held no lines, nothing decoded (${hint})\n`);
  }
  if (bad.length && bad.length === number) {
    // nothing decoded: a script reading the output would take an empty answer for a result (as Python's decode)
    throw new InputError(`every ${label} was bad (${number} skipped), nothing decoded; the first: ${bad[0]}`);
  }
  if (bad.length) process.stderr.write(`skipped ${bad.length} bad ${label}(s) of ${number}; the first: ${bad[0]}\n`);
}

process.stdout.on("error", (error) => {
  if (error.code === "EPIPE") process.exit(0);
  throw error;
});

main().catch((error) => {
  const bad =
    error instanceof InputError ||
    error instanceof ModelFileError ||
    error instanceof UsageError ||
    error instanceof TypeError;
  process.stderr.write(`decode.mjs: ${bad ? "" : "error: "}${error.message.split("\n")[0]}\n`);
  process.exitCode = bad ? 2 : 1;
});
