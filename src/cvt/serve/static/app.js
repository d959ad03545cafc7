// cvt serve page: send one image to /v1/predict and /v1/explain, show the top-5 and the attention overlay.
"use strict";

const $ = (id) => document.getElementById(id);

function setStatus(text, isError = false) {
  $("status").textContent = text;
  $("status").classList.toggle("error", isError);
}

async function errorText(response) {
  try {
    const body = await response.json();
    return body.error || response.statusText;
  } catch (e) {
    return `${response.status} ${response.statusText}`;
  }
}

function showTopk(record) {
  const list = $("topk");
  list.replaceChildren();
  record.labels.forEach((label, i) => {
    const pct = 100 * record.probs[i];
    const item = document.createElement("li");
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${Math.max(0.5, pct).toFixed(1)}%`;
    const text = document.createElement("span");
    text.className = "text";
    const name = document.createElement("span");
    name.className = "label";
    name.textContent = `${label} (class ${record.indices[i]})`;
    const value = document.createElement("span");
    value.textContent = `${pct.toFixed(1)}%`;
    text.append(name, value);
    item.append(bar, text);
    list.append(item);
  });
}

let overlayUrl = null;
let previewUrl = null;

async function classify(file) {
  if (!file) return;
  if (file.type && !file.type.startsWith("image/")) {
    setStatus(`${file.name}: not an image`, true);
    return;
  }
  setStatus(`Classifying ${file.name}\u2026`);
  const form = () => { const f = new FormData(); f.append("file", file, file.name); return f; };
  try {
    const [predicted, explained] = await Promise.all([
      fetch("/v1/predict?topk=5", { method: "POST", body: form() }),
      fetch("/v1/explain", { method: "POST", body: form() }),
    ]);
    if (!predicted.ok) throw new Error(await errorText(predicted));
    const record = await predicted.json();
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    $("preview").src = previewUrl;
    showTopk(record);
    $("results").hidden = false;
    if (explained.ok) {
      if (overlayUrl) URL.revokeObjectURL(overlayUrl);
      overlayUrl = URL.createObjectURL(await explained.blob());
      $("overlay").src = overlayUrl;
      $("overlay").closest("figure").hidden = false;
    } else {
      $("overlay").closest("figure").hidden = true;
    }
    setStatus(`${file.name}: ${record.labels[0]} (${(100 * record.probs[0]).toFixed(1)}%)`);
  } catch (e) {
    setStatus(`${file.name}: ${e.message}`, true);
  }
}

function setUp() {
  const zone = $("drop-zone");
  const input = $("file");
  input.addEventListener("change", () => classify(input.files[0]));
  zone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      input.click();
    }
  });
  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("dragging"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("dragging");
    classify(event.dataTransfer.files[0]);
  });
  fetch("/v1/model")
    .then((r) => r.json())
    .then((m) => {
      const size = m.preprocess.img_size;
      $("model-info").textContent = `${m.model}: ${m.num_classes} classes, ${size}\u00d7${size} input`;
    })
    .catch(() => { $("model-info").textContent = ""; });
}

document.addEventListener("DOMContentLoaded", setUp);
