// The web page of rest_api_flask: sends an image to POST api/v1/predict and draws the answer.
//
// Masks are drawn here, in the browser, from each instance's RLE (mask_rle, asked for as plain run
// lengths with rle=uncompressed), so instances can be shown or hidden and the mask opacity changed
// without asking the server again. Every URL is
// relative (no leading "/"), so the page works behind ngrok, Colab's proxy or any path prefix.
"use strict";

(function () {
  // matplotlib's tab10 / tab20, the palettes maskrcnn_finetune.visualize.class_colors uses, so the
  // colours here match the server's overlay.png.
  const TAB10 = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf"];
  const TAB20 = ["#1f77b4", "#aec7e8", "#ff7f0e", "#ffbb78", "#2ca02c", "#98df8a", "#d62728", "#ff9896",
    "#9467bd", "#c5b0d5", "#8c564b", "#c49c94", "#e377c2", "#f7b6d2", "#7f7f7f", "#c7c7c7", "#bcbd22",
    "#dbdb8d", "#17becf", "#9edae5"];

  const $ = (id) => document.getElementById(id);
  const el = {
    dropZone: $("drop-zone"), fileInput: $("file-input"), urlForm: $("url-form"), urlInput: $("url-input"),
    urlButton: $("url-button"), threshold: $("threshold"), thresholdValue: $("threshold-value"),
    status: $("status"), error: $("error"), result: $("result"), summary: $("summary"),
    opacity: $("opacity"), opacityValue: $("opacity-value"), showBoxes: $("show-boxes"), greyImage: $("grey-image"),
    viewer: $("viewer"), baseImage: $("base-image"), canvas: $("overlay"), baseNote: $("base-note"),
    count: $("instance-count"), tbody: document.querySelector("#instances tbody"),
    noInstances: $("no-instances"), showAll: $("show-all"), hideAll: $("hide-all"),
    modelInfo: $("model-info"), dlOverlay: $("dl-overlay"), dlMasks: $("dl-masks"), dlJson: $("dl-json"),
    dlCoco: $("dl-coco"),
    dlLabelme: $("dl-labelme"),
  };

  const state = {
    input: null,          // {kind: "file", file} or {kind: "url", url}: what the last prediction used
    objectUrl: null,      // blob: URL of the chosen file, shown under the masks
    result: null,         // the last 200 answer of api/v1/predict
    runs: [],             // per instance: the mask's run lengths (Int32Array)
    visible: [],          // per instance: shown or not
    request: 0,           // sequence number: an older answer arriving late is ignored
    thresholdTouched: false,
    classCount: 0,
    highlight: null,      // index of the instance whose row is under the pointer or focused
  };

  // ---------------------------------------------------------------- drawing

  function classColor(classId) {
    const palette = state.classCount <= 10 ? TAB10 : TAB20;
    return palette[((classId % palette.length) + palette.length) % palette.length];
  }

  function hexToRgb(hex) {
    const n = parseInt(hex.slice(1), 16);
    return [(n >> 16) & 255, (n >> 8) & 255, n & 255];
  }

  // Phones refuse canvases above about 16 megapixels: bigger images get a scaled-down mask layer.
  const MAX_LAYER_PIXELS = 16e6;

  /** Paints the visible masks (at image resolution where possible); returns the canvas and the share of pixels covered. */
  function paintMasks(width, height) {
    const f = Math.min(1, Math.sqrt(MAX_LAYER_PIXELS / (width * height)));
    const lw = Math.max(1, Math.floor(width * f)), lh = Math.max(1, Math.floor(height * f));
    const layer = document.createElement("canvas");
    layer.width = lw;
    layer.height = lh;
    const ctx = layer.getContext("2d");
    const image = ctx.createImageData(lw, lh);
    const data = image.data;
    const covered = new Uint8Array(width * height);
    let union = 0;
    const instances = state.result.instances;
    // Lowest score first, so the best instance ends on top, as in the server's overlay.
    const order = instances.map((_, i) => i).sort((a, b) => instances[a].score - instances[b].score);
    for (const i of order) {
      if (!state.visible[i]) continue;
      const [r, g, b] = hexToRgb(classColor(instances[i].class_id));
      const runs = state.runs[i]; // background, mask, background, ... over pixels in column-major order
      let pos = 0;
      for (let j = 0; j < runs.length; j += 1) {
        const end = pos + runs[j];
        if (j % 2 === 1) {
          for (let q = pos; q < end; q += 1) {
            const x = (q / height) | 0, y = q - x * height; // column-major index -> (x, y)
            const pixel = y * width + x;
            if (!covered[pixel]) { covered[pixel] = 1; union += 1; }
            const o = f === 1 ? pixel * 4 : (Math.min(lh - 1, (y * f) | 0) * lw + Math.min(lw - 1, (x * f) | 0)) * 4;
            data[o] = r; data[o + 1] = g; data[o + 2] = b; data[o + 3] = 255;
          }
        }
        pos = end;
      }
    }
    ctx.putImageData(image, 0, 0);
    return { layer, fraction: union / (width * height) };
  }

  let maskLayer = null;

  /** Redraws the overlay canvas at screen resolution: masks (scaled, crisp), then boxes and labels. */
  function draw(repaint) {
    const result = state.result;
    if (!result) return;
    const { width, height } = result.image;
    if (repaint || !maskLayer) {
      const painted = paintMasks(width, height);
      maskLayer = painted.layer;
      updateSummary(painted.fraction);
    }
    const box = el.viewer.getBoundingClientRect();
    const ratio = window.devicePixelRatio || 1;
    const cw = Math.max(1, Math.round(box.width * ratio)), ch = Math.max(1, Math.round(box.height * ratio));
    const canvas = el.canvas;
    if (canvas.width !== cw || canvas.height !== ch) { canvas.width = cw; canvas.height = ch; }
    const ctx = canvas.getContext("2d");
    ctx.clearRect(0, 0, cw, ch);
    ctx.globalAlpha = Number(el.opacity.value) / 100;
    ctx.imageSmoothingEnabled = false; // mask edges stay pixel-exact when a small image is enlarged
    ctx.drawImage(maskLayer, 0, 0, cw, ch);
    ctx.globalAlpha = 1;
    if (!el.showBoxes.checked) return;
    const sx = cw / width, sy = ch / height;
    const fontPx = Math.round(12 * ratio);
    ctx.font = `600 ${fontPx}px system-ui, sans-serif`;
    ctx.textBaseline = "top";
    // Many labels would hide the picture: beyond a few, boxes carry only their index (the row under
    // the pointer still gets its full label, drawn last so it is on top).
    const fullLabels = state.visible.filter(Boolean).length <= 8;
    const order = result.instances.map((_, i) => i).filter((i) => state.visible[i] && i !== state.highlight);
    if (state.highlight !== null && state.visible[state.highlight]) order.push(state.highlight);
    for (const i of order) {
      const inst = result.instances[i];
      const focus = i === state.highlight;
      const color = classColor(inst.class_id);
      const [x0, y0, x1, y1] = inst.box;
      ctx.lineWidth = Math.max(1, Math.round((focus ? 4 : 2) * ratio));
      ctx.strokeStyle = focus ? "#ffffff" : color;
      ctx.strokeRect(x0 * sx, y0 * sy, (x1 - x0) * sx, (y1 - y0) * sy);
      const text = fullLabels || focus ? `${inst.index} ${inst.class_name} ${inst.score.toFixed(2)}` : String(inst.index);
      const tw = ctx.measureText(text).width + 6 * ratio, th = fontPx + 4 * ratio;
      const ty = Math.max(0, y0 * sy - th);
      ctx.fillStyle = color;
      ctx.fillRect(x0 * sx, ty, tw, th);
      ctx.fillStyle = "#fff";
      ctx.fillText(text, x0 * sx + 3 * ratio, ty + 2 * ratio);
    }
  }

  // ---------------------------------------------------------------- showing a result

  const percent = (x, digits = 1) => `${(100 * x).toFixed(digits)}\u00a0%`;
  const relative = (link) => (link || "").replace(/^\/+/, ""); // "/api/v1/..." -> "api/v1/..."

  function updateSummary(shownFraction) {
    const r = state.result;
    const shown = state.visible.filter(Boolean).length;
    el.summary.textContent = "";
    // Exact values for scripts and tests; the text rounds them.
    el.summary.dataset.maskedFraction = String(r.masked_fraction);
    el.summary.dataset.shownFraction = String(shownFraction);
    const strong = document.createElement("strong");
    strong.id = "masked-fraction";
    strong.textContent = percent(r.masked_fraction);
    el.summary.append("Masked fraction: ", strong, " of the image");
    if (shown !== r.num_instances) el.summary.append(` (${percent(shownFraction)} for the ${shown} shown)`);
    const timing = r.timing_ms && r.timing_ms.total != null ? ` · ${Math.round(r.timing_ms.total)} ms` : "";
    el.summary.append(document.createElement("br"),
      `${r.num_instances} instance${r.num_instances === 1 ? "" : "s"} at threshold ${Number(r.threshold).toFixed(2)}` +
      ` · ${r.image.width}×${r.image.height} px${timing}`);
  }

  function fillTable() {
    const r = state.result;
    el.tbody.textContent = "";
    r.instances.forEach((inst, i) => {
      const row = document.createElement("tr");
      row.dataset.index = String(inst.index);
      const cells = [];
      const toggle = document.createElement("input");
      toggle.type = "checkbox";
      toggle.checked = state.visible[i];
      toggle.setAttribute("aria-label", `Show instance ${inst.index} (${inst.class_name})`);
      toggle.addEventListener("change", () => {
        state.visible[i] = toggle.checked;
        row.classList.toggle("hidden-instance", !toggle.checked);
        draw(true);
      });
      // Pointing at a row (or tabbing to its toggle) outlines that instance in the picture.
      const highlight = (on) => { state.highlight = on ? i : null; draw(false); };
      row.addEventListener("mouseenter", () => highlight(true));
      row.addEventListener("mouseleave", () => highlight(false));
      toggle.addEventListener("focus", () => highlight(true));
      toggle.addEventListener("blur", () => highlight(false));
      cells.push(toggle);
      cells.push(String(inst.index));
      const name = document.createElement("span");
      const swatch = document.createElement("span");
      swatch.className = "swatch";
      swatch.style.background = classColor(inst.class_id);
      name.append(swatch, inst.class_name);
      cells.push(name);
      cells.push(inst.score.toFixed(3));
      cells.push(percent(inst.area_fraction, 2));
      cells.forEach((content, c) => {
        const td = document.createElement("td");
        if (c >= 3) td.className = "num";
        td.append(content);
        row.append(td);
      });
      el.tbody.append(row);
    });
    el.count.textContent = `(${r.num_instances})`;
    el.noInstances.hidden = r.num_instances > 0;
  }

  function setDownloads() {
    const r = state.result;
    const stem = ((r.image.filename || "image").replace(/\.[^.]*$/, "") || "image") + "_" + r.id.slice(0, 8);
    const links = r.links || {};
    const set = (a, link, name) => {
      if (link) { a.href = relative(link); a.setAttribute("download", name); a.hidden = false; }
      else { a.removeAttribute("href"); a.hidden = true; }
    };
    set(el.dlOverlay, links.overlay, `${stem}_overlay.png`);
    set(el.dlMasks, links.masks_zip, `${stem}_masks.zip`);
    set(el.dlJson, links.result_json, `${stem}_result.json`);
    set(el.dlCoco, links.coco_json, `${stem}_coco_results.json`);
    set(el.dlLabelme, links.labelme_json, `${stem}.json`);
  }

  function showResult(result) {
    state.result = result;
    state.classCount = (result.model && result.model.classes && result.model.classes.length) || 0;
    state.runs = result.instances.map((inst) => Int32Array.from(inst.mask_rle.counts));
    state.visible = result.instances.map(() => true);
    state.highlight = null;
    maskLayer = null;
    const { width, height } = result.image;
    el.viewer.style.aspectRatio = `${width} / ${height}`;
    // A tall image should not push the list off the screen.
    el.viewer.style.maxWidth = `min(100%, calc(75vh * ${width / height}))`;
    el.baseNote.hidden = true;
    el.baseImage.onerror = () => {
      // The browser could not load the image itself (e.g. a URL that forbids hotlinking): the
      // server's overlay has the same size, so it stands in, with the masks already drawn in.
      if (result.links && result.links.overlay && !el.baseImage.src.endsWith(relative(result.links.overlay))) {
        el.baseImage.src = relative(result.links.overlay);
        el.baseNote.textContent = "The original image could not be shown here, so the server's overlay is shown under the masks.";
        el.baseNote.hidden = false;
      }
    };
    el.baseImage.onload = () => draw(false);
    el.baseImage.src = state.input.kind === "file" ? state.objectUrl : state.input.url;
    el.result.hidden = false;
    fillTable();
    setDownloads();
    draw(true);
  }

  // ---------------------------------------------------------------- talking to the API

  function setBusy(busy, message) {
    el.status.textContent = message || "";
    el.status.classList.toggle("busy", busy);
    el.urlButton.disabled = busy;
  }

  function showError(message) {
    el.error.textContent = message;
    el.error.hidden = !message;
  }

  /** A readable message for a failed answer: the API's {"error": ...} when there is one. */
  async function errorMessage(response) {
    let detail = "";
    try {
      const text = await response.text();
      try {
        const body = JSON.parse(text);
        detail = (body && (body.error || body.message)) || "";
      } catch (_) {
        // Not JSON (a proxy's HTML page, a plain-text 413): keep a short, tag-free excerpt.
        detail = text.replace(/<[^>]*>/g, " ").replace(/\s+/g, " ").trim().slice(0, 300);
      }
    } catch (_) { /* body unreadable: the status says enough */ }
    if (response.status === 413 && !detail) detail = "The image is larger than this server accepts; send a smaller image.";
    if (response.status === 401 && !detail) detail = "This server needs a user name and password, or an API key.";
    return `Error ${response.status}: ${detail || response.statusText || "the server gave no details."}`;
  }

  async function predict() {
    if (!state.input) return;
    const seq = ++state.request;
    const threshold = el.threshold.value;
    showError("");
    setBusy(true, "Finding masks…");
    let request;
    if (state.input.kind === "file") {
      const form = new FormData();
      form.append("image", state.input.file, state.input.file.name || "image");
      form.append("threshold", threshold);
      form.append("remove_colors", el.greyImage.checked ? "1" : "0");
      request = { method: "POST", body: form };
    } else {
      request = {
        method: "POST", headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ url: state.input.url, threshold: Number(threshold), remove_colors: el.greyImage.checked }),
      };
    }
    try {
      const response = await fetch("api/v1/predict?rle=uncompressed", { ...request, credentials: "same-origin" });
      if (seq !== state.request) return;
      if (!response.ok) {
        const message = await errorMessage(response);
        if (seq !== state.request) return;
        setBusy(false, "");
        showError(message);
        return;
      }
      const result = await response.json();
      if (seq !== state.request) return;
      setBusy(false, `Done: ${result.num_instances} instance${result.num_instances === 1 ? "" : "s"} found.`);
      showResult(result);
    } catch (err) {
      if (seq !== state.request) return;
      setBusy(false, "");
      showError(`Could not reach the server (${err.message}). Check that it is still running and reload the page.`);
    }
  }

  function useFile(file) {
    if (!file) return;
    if (state.objectUrl) URL.revokeObjectURL(state.objectUrl);
    state.objectUrl = URL.createObjectURL(file);
    state.input = { kind: "file", file };
    predict();
  }

  function useUrl(url) {
    url = (url || "").trim();
    if (!url) { showError("Paste the address of an image first, e.g. https://example.com/photo.jpg."); return; }
    if (!/^https?:\/\//i.test(url)) { showError("The URL must start with http:// or https://."); return; }
    state.input = { kind: "url", url };
    predict();
  }

  async function loadModelInfo() {
    try {
      const response = await fetch("api/v1/model", { credentials: "same-origin" });
      if (!response.ok) { el.modelInfo.textContent = ""; return; }
      const info = await response.json();
      const classes = info.classes || [];
      const parts = [info.backbone, info.engine].filter(Boolean).join(" · ");
      el.modelInfo.textContent = `${parts ? parts + " · " : ""}${classes.length} class${classes.length === 1 ? "" : "es"}` +
        (classes.length ? `: ${classes.slice(0, 12).join(", ")}${classes.length > 12 ? ", …" : ""}` : "");
      const t = [info.threshold, info.default_threshold, info.score_threshold].find((v) => typeof v === "number");
      if (t !== undefined && !state.thresholdTouched && !state.input) setThreshold(t);
    } catch (_) {
      el.modelInfo.textContent = "";
    }
  }

  function setThreshold(value) {
    el.threshold.value = String(Math.min(1, Math.max(0, value)));
    el.thresholdValue.textContent = Number(el.threshold.value).toFixed(2);
  }

  // ---------------------------------------------------------------- events

  el.fileInput.addEventListener("change", () => {
    useFile(el.fileInput.files[0]);
    el.fileInput.value = ""; // choosing the same file again still triggers a prediction
  });
  el.dropZone.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") { event.preventDefault(); el.fileInput.click(); }
  });
  ["dragenter", "dragover"].forEach((type) => el.dropZone.addEventListener(type, (event) => {
    event.preventDefault();
    el.dropZone.classList.add("dragging");
  }));
  ["dragleave", "dragend"].forEach((type) => el.dropZone.addEventListener(type, () => el.dropZone.classList.remove("dragging")));
  el.dropZone.addEventListener("drop", (event) => {
    event.preventDefault();
    el.dropZone.classList.remove("dragging");
    const dt = event.dataTransfer;
    if (dt.files && dt.files.length) { useFile(dt.files[0]); return; }
    const uri = (dt.getData("text/uri-list") || dt.getData("text/plain") || "").split("\n")[0];
    if (uri) { el.urlInput.value = uri.trim(); useUrl(uri); }
  });
  // Dropping beside the zone would make the browser navigate away to the file: prevent it.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());
  document.addEventListener("paste", (event) => {
    const items = Array.from((event.clipboardData && event.clipboardData.files) || []);
    const image = items.find((f) => f.type.startsWith("image/"));
    if (image) { event.preventDefault(); useFile(image); }
  });

  el.urlForm.addEventListener("submit", (event) => {
    event.preventDefault();
    useUrl(el.urlInput.value);
  });

  el.threshold.addEventListener("input", () => {
    state.thresholdTouched = true;
    el.thresholdValue.textContent = Number(el.threshold.value).toFixed(2);
  });
  // Only when the slider is let go: one request, not one per pixel dragged.
  el.threshold.addEventListener("change", () => { if (state.input) predict(); });

  el.opacity.addEventListener("input", () => {
    el.opacityValue.textContent = `${el.opacity.value}%`;
    draw(false);
  });
  el.showBoxes.addEventListener("change", () => draw(false));
  // the picture under the masks in grey, the masks in colour (the server's --remove-colors starts it ticked);
  // the next prediction's overlay.png is drawn the same way
  const showGrey = () => el.baseImage.classList.toggle("grey", el.greyImage.checked);
  el.greyImage.addEventListener("change", showGrey);
  showGrey();
  const setAll = (shown) => {
    if (!state.result) return;
    state.visible = state.visible.map(() => shown);
    el.tbody.querySelectorAll("tr").forEach((row) => {
      row.querySelector("input").checked = shown;
      row.classList.toggle("hidden-instance", !shown);
    });
    draw(true);
  };
  el.showAll.addEventListener("click", () => setAll(true));
  el.hideAll.addEventListener("click", () => setAll(false));
  if (window.ResizeObserver) new ResizeObserver(() => draw(false)).observe(el.viewer);
  else window.addEventListener("resize", () => draw(false));

  loadModelInfo();
})();
