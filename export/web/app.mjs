// The browser page's glue: gets an export folder's files, hands them to lit_seq2seq.mjs, decodes the text box.
// Everything the contract asks (metadata, integrity, pair check, source checks, decoding) lives in
// ../js/lit_seq2seq.mjs, shared with the Node consumer; this file only moves bytes and text in and out of the page.
const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);

/** A page that cannot work at all (its modules did not load) says why on the page and to a waiting reporter. */
async function fatal(message) {
  $("error").textContent = `Error: ${message}`;
  document.body.dataset.state = "done";
  if (params.has("report")) {
    await fetch(params.get("report"), { method: "POST", body: JSON.stringify({ error: message, results: [] }) });
  }
  throw new Error(message);
}

// Imported here rather than statically so that a missing install is a message on the page, not a blank one.
const ort = await import("./node_modules/onnxruntime-web/dist/ort.wasm.min.mjs").catch((err) =>
  fatal(`onnxruntime-web is not installed next to this page: run \`npm ci --ignore-scripts\` in export/web (${err})`),
);
const lit = await import("../js/lit_seq2seq.mjs").catch((err) =>
  fatal(`../js/lit_seq2seq.mjs did not load: serve the whole export/ folder, not export/web alone (${err.message})`),
);

// One thread: a threaded wasm build needs a cross-origin-isolated page (COOP/COEP headers), which a plain static
// server does not send. The tiny step graphs gain nothing from threads anyway.
ort.env.wasm.numThreads = 1;
ort.env.wasm.proxy = false;

// The files of an export, by the part names lit_seq2seq.mjs takes them under.
const PARTS = { [lit.ENCODER_FILE]: "encoder", [lit.DECODER_FILE]: "decoder", [lit.GREEDY_FILE]: "greedy" };
const GRAPHS = Object.keys(PARTS);
const OPTIONAL = new Set([lit.GREEDY_FILE]); // exports made before greedy.onnx hold only the two step graphs
let model = null;

function showError(message) {
  $("error").textContent = message ? `Error: ${message}` : "";
}

// ------------------------------------------------------------------------------------------ getting the files

/** The export's graphs from a folder URL: {encoder, decoder[, greedy]: Uint8Array}; a missing required file is an
 * error naming it. */
async function fetchFolder(url) {
  const base = new URL(url.endsWith("/") ? url : `${url}/`, location.href);
  const files = {};
  for (const name of GRAPHS) {
    const where = new URL(name, base);
    let response;
    try {
      response = await fetch(where, { cache: "no-store" });
    } catch (err) {
      throw new Error(`${name}: could not fetch ${where} (${err.message})`);
    }
    if (response.status === 404 && OPTIONAL.has(name)) continue;
    if (!response.ok) throw new Error(`${name}: missing from ${base} (HTTP ${response.status} for ${where})`);
    files[PARTS[name]] = new Uint8Array(await response.arrayBuffer());
  }
  return { files, where: base.href, folder: base.href.replace(/\/+$/, "") };
}

/** The graphs among picked or dropped File objects, by base name (a folder's other files are ignored). */
async function readPicked(fileList) {
  const files = {};
  for (const file of fileList) {
    const name = file.name.split("/").pop();
    if (name in PARTS) files[PARTS[name]] = new Uint8Array(await file.arrayBuffer());
  }
  for (const name of GRAPHS) {
    if (!files[PARTS[name]] && !OPTIONAL.has(name)) {
      throw new Error(`${name}: not among the files given (an export folder holds ${GRAPHS.join(", ")})`);
    }
  }
  return files;
}

/** Files of a drop: plain files, or the entries of a dropped folder (one level is all an export has). */
async function droppedFiles(dataTransfer) {
  const out = [];
  const plain = [...dataTransfer.files]; // read now: a drop's data is gone once the event returns
  const entries = [...dataTransfer.items].map((item) => item.webkitGetAsEntry?.()).filter(Boolean);
  for (const entry of entries) {
    if (entry.isFile) out.push(await new Promise((ok, fail) => entry.file(ok, fail)));
    else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (let batch; (batch = await new Promise((ok, fail) => reader.readEntries(ok, fail))).length; ) {
        for (const child of batch) if (child.isFile) out.push(await new Promise((ok, fail) => child.file(ok, fail)));
      }
    }
  }
  return out.length ? out : plain;
}

// ----------------------------------------------------------------------------------------- model and decoding

async function open(files, where, folder = "") {
  model = null;
  $("decode").disabled = true;
  showError("");
  $("model").textContent = `loading ${where} ...`;
  try {
    model = await lit.loadModel(ort, files, { folder }); // its messages name the file by the folder's URL
  } catch (err) {
    $("model").textContent = "no model loaded";
    throw err;
  }
  const m = model.meta;
  const graphs = model.sessions.greedy ? "greedy.onnx + step graphs" : "step graphs only (no greedy.onnx)";
  $("model").textContent =
    `${where}: task ${m.task}, format_version ${m.format_version}, ${m.cell} ${m.hidden_size}x${m.num_layers}` +
    `${m.attention === "1" ? " + attention" : ""}${m.context_rnn === "1" ? " + context RNN" : ""}, sources of ${m.min_source_length}-${m.source_length} tokens, ` +
    `${graphs}, export_id ${m.export_id}`;
  // One throw-away decode, so that the time shown for the user's lines is not that of onnxruntime's first run.
  const warm = new Array(model.minSourceLength).fill(model.minToken);
  await model.greedy(ort, [warm]);
  if (model.sessions.greedy) await model.greedy(ort, [warm], { twoGraph: true });
  $("decode").disabled = false;
  document.querySelector("th.text").hidden = !model.isText;
}

/** Line `number` of the text box -> its source ids, checked as the runtime checks them (InputError naming the
 * problem). */
function parseLine(line, number, options) {
  if (line.trim() === "") throw new lit.InputError("empty source (a blank line)");
  try {
    // Ids: what is not an integer stays a string, so that checkSource names it ("x" is not an integer token id).
    const ids = model.isText
      ? model.encodeText(line, { ...options, where: `line ${number}` }) // one string: one row
      : line
          .split(lit.PY_SPACE) // Python's whitespace, as lit-seq2seq decode reads a line of ids
          .filter(Boolean)
          .map((piece) => (/^[+-]?\d+$/.test(piece) ? Number(piece) : piece)); // "+5" is 5, as decode reads it
    model.checkSource(ids, options);
    return ids;
  } catch (err) {
    // The shared module names its API's option; on the page the option is the checkbox.
    const checkbox = "(tick “allow untrained lengths” to decode anyway)";
    err.message = err.message.replace(/\(pass allowUntrainedLengths[^)]*\)/, checkbox);
    throw err;
  }
}

const BEAM_SIZE = 4;
const PATH_NAMES = {
  greedy: "greedy.onnx",
  steps: "encoder.onnx + decoder_step.onnx loop",
  beam: `beam search, ${BEAM_SIZE} beams, encoder.onnx + decoder_step.onnx`,
};

/** Decode every line of the text box (a final newline adds none); returns one result per line, tokens or an error.
 * The good lines are decoded as one batch, right-padded, as OnnxSeq2Seq.greedy decodes a batch. */
async function decodeAll() {
  const lines = $("input").value.replace(/\r/g, "").split("\n");
  while (lines.length && lines[lines.length - 1] === "") lines.pop(); // a final newline is not an empty source
  const options = { allowUntrainedLengths: $("untrained").checked };
  const results = lines.map((line, i) => ({ line: i + 1, input: line, tokens: null, text: null, error: null }));
  const rows = [];
  const good = [];
  for (const result of results) {
    try {
      rows.push(parseLine(result.input, result.line, options));
      good.push(result);
    } catch (err) {
      const named = err.message.startsWith(`line ${result.line}: `); // encodeText names the line itself
      result.error = named ? err.message : `line ${result.line}: ${err.message}`;
    }
  }
  const picked = $("path").value;
  const path = picked === "beam" ? "beam" : picked === "steps" || !model.sessions.greedy ? "steps" : "greedy";
  const start = performance.now();
  if (rows.length) {
    const width = Math.max(...rows.map((row) => row.length));
    const batch = rows.map((row) => [...row, ...new Array(width - row.length).fill(model.padToken)]);
    const decoded =
      path === "beam"
        ? (await model.beamSearch(ort, batch, { ...options, beamSize: BEAM_SIZE })).tokens
        : await model.greedy(ort, batch, { ...options, twoGraph: path === "steps" });
    decoded.forEach((tokens, i) => {
      good[i].tokens = tokens;
      if (model.isText) good[i].text = model.decodeText(tokens);
    });
  }
  return { results, path, ms: performance.now() - start };
}

function render({ results, path, ms }) {
  const body = $("output").tBodies[0];
  body.replaceChildren();
  for (const r of results) {
    const tr = body.insertRow();
    tr.insertCell().textContent = r.line;
    tr.insertCell().textContent = r.input;
    if (r.error) {
      const td = tr.insertCell();
      td.colSpan = model.isText ? 2 : 1;
      td.className = "bad";
      td.textContent = r.error;
    } else {
      tr.insertCell().textContent = r.tokens.join(" ");
      if (model.isText) tr.insertCell().textContent = r.text;
    }
  }
  $("output").hidden = results.length === 0;
  const bad = results.filter((r) => r.error).length;
  $("timing").textContent =
    `${results.length - bad} decoded${bad ? `, ${bad} refused` : ""} in ${ms.toFixed(1)} ms ` +
    `(${PATH_NAMES[path]}, onnxruntime-web wasm, 1 thread)`;
}

// ------------------------------------------------------------------------------------------------- wiring

async function guarded(work) {
  try {
    return await work();
  } catch (err) {
    showError(err.message ?? String(err));
    return { error: err.message ?? String(err) };
  }
}

// URL parameters, for a served export and for automation (tests, the screenshot):
//   model=URL of an export folder, input=the text box's lines, path=steps (two-graph loop) or beam (beam search),
//   untrained=1, auto=1 (decode as soon as a model is open, served or picked), report=URL (POST the outcome there as
//   JSON).
// body[data-state]: "ready" while the page waits for a model, "done" once an automatic run is over.

/** Open a model from `getFiles`; with auto=1 then decode the text box and report the outcome (or the error). */
async function openThenMaybeDecode(getFiles) {
  const loaded = await guarded(async () => {
    const { files, where, folder } = await getFiles();
    await open(files, where, folder);
  });
  if (params.get("auto") !== "1") return;
  const outcome = loaded?.error
    ? { error: loaded.error, results: [] }
    : await guarded(async () => {
        const decoded = await decodeAll();
        render(decoded);
        return { error: null, ...decoded };
      });
  document.body.dataset.state = "done";
  if (params.has("report")) await fetch(params.get("report"), { method: "POST", body: JSON.stringify(outcome) });
}

$("decode").addEventListener("click", () =>
  guarded(async () => {
    showError("");
    render(await decodeAll());
  }),
);
for (const id of ["pick-dir", "pick-files"]) {
  $(id).addEventListener("change", (event) => {
    const picked = [...event.target.files];
    openThenMaybeDecode(async () => ({ files: await readPicked(picked), where: `${picked.length} picked files` }));
  });
}
const drop = $("drop");
drop.addEventListener("dragover", (event) => {
  event.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  drop.classList.remove("over");
  const dropped = droppedFiles(event.dataTransfer); // the items must be read during the event
  openThenMaybeDecode(async () => ({ files: await readPicked(await dropped), where: "dropped files" }));
});

if (params.has("input")) $("input").value = params.get("input");
if (["steps", "beam"].includes(params.get("path"))) $("path").value = params.get("path");
if (params.get("untrained") === "1") $("untrained").checked = true;
if (params.has("model")) openThenMaybeDecode(() => fetchFolder(params.get("model")));
else document.body.dataset.state = "ready";
