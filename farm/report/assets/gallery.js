/* farm report gallery: grid and strength-slider views over window.FARM_GALLERY.
 *
 * Plain script, no framework, no network: data comes from data/index.js (set before this
 * file runs), then from data/entries-NNNN.js pages and data/detail-NNNN.js chunks, loaded
 * by <script> injection because fetch() is refused on file://. Data is only ever put into
 * the page with textContent, attributes and properties, never innerHTML.
 *
 * data/index.js holds no entry: only the axes (values, and entries per value), the title,
 * notes, headlines, the src template, and the chunk table: chunks.axes (axis positions)
 * and chunks.keys, each [value indices on those axes, entries, first page, pages]. A page
 * file calls window.farmEntries(page, start, rows): the gallery's entries start, start+1,
 * ..., each row [id, src (0 = template), value indices (-1 = none), flags, d0]. A detail
 * file calls window.farmDetail(k, details) for entries k*data.detail onwards.
 * With no chunk axis (a small job) the page loads every page file at once. Otherwise each
 * chunk axis's filter has no "all": the page loads the pages of the key its chunk filters
 * select (the first key at the start), and only those; the other views and filters work
 * over the loaded entries, so a slider never waits for a file.
 *
 * Stable hooks (tests and users' scripts rely on them):
 *   #view-grid, #view-slider         buttons switching the view (aria-pressed)
 *   #grid-view, #slider-view         the two views' containers (the hidden one is empty)
 *   #row-axis, #col-axis             <select> of axis names ("" = none) for grid rows/columns
 *   .filter[data-axis=NAME]          <select> per varying axis: "all" or a value's index
 *   .filter[data-chunk]              a chunk axis's filter: a value's index (-1 = none), no "all"
 *   main[aria-busy=true]             while the entries a view needs are loading
 *   #heatmap                         checkbox; #grid-view gets .heat-on, .heat overlays show
 *   #slider-axis                     <select> of the axis the sliders move along
 *   #prev, #next, #page-info         pager of the current view ("page k of n")
 *   #summary, #empty, #notes         counts, the no-match message, the notes banner
 *   #headlines > p.headline          what the report concludes (the checkpoint to ship)
 *   .block[data-block]               one grid per combination of the other axes
 *     .block-title                   that combination, "name: value · ..."
 *     th.col-head[data-value]        column header (value text)
 *     th.row-head[data-value]        row header (value text)
 *     td.slot                        one grid position; .empty-slot when no image is there
 *   .cell[data-id][data-index]       an image in the grid, with data-row/data-col (values)
 *     .cell.flagged, .flag           flagged image and its flags' text
 *     .open > img                    button opening the detail panel; .caption; .heat
 *   .slider-card[data-key][data-id]  a card per combination of the other axes (tabindex 0;
 *                                    ArrowLeft/ArrowRight move its slider)
 *     .slider-card input[type=range] position along the slider axis
 *     .slider-label                  "name value" of the image shown
 *   #detail (<dialog>)               #detail-title, #detail-image, #detail-infotext,
 *                                    #detail-row (metadata table), #detail-close; Esc closes
 *
 * Filters: "all" on an axis that is neither rows nor columns gives one grid block per
 * value (per combination, when several such axes are on "all"); a single value keeps only
 * its images. A filter on the row or column axis keeps only those rows or columns.
 */
(function () {
  "use strict";

  var ROWS_PER_PAGE = 25;
  var CARDS_PER_PAGE = 24;
  var NONE = -1;

  var data = window.FARM_GALLERY;
  var $ = function (id) { return document.getElementById(id); };

  if (!data || !data.chunks || !Array.isArray(data.axes)) {
    showLines("notes", "note", ["The gallery's data (data/index.js) could not be loaded."]);
    return;
  }

  var axes = data.axes;
  var srcTemplate = data.src || ["../images/", ".png"];
  var chunkAxes = data.chunks.axes;
  var keys = data.chunks.keys.map(function (key) {
    return { values: key[0], count: key[1], first: key[2], pages: key[3] };
  });
  var keyAt = new Map();
  keys.forEach(function (key, i) { keyAt.set(key.values.join(","), i); });
  var entries = [];         // the entries of the loaded pages, in the gallery's order
  var byIndex = new Map();  // entry.index -> entry, for the buttons that open one
  var varying = [];
  axes.forEach(function (axis, k) {
    if (axis.values.length > 1 || isChunkAxis(k)) varying.push(k);
  });

  var state = { view: "grid", page: { grid: 0, slider: 0 }, filters: {} };
  // A chunk axis is always filtered: the page opens on the first key.
  if (keys.length) chunkAxes.forEach(function (k, j) { state.filters[k] = keys[0].values[j]; });

  // ---- helpers --------------------------------------------------------------------------

  function el(tag, className, text) {
    var node = document.createElement(tag);
    if (className) node.className = className;
    if (text != null) node.textContent = text;
    return node;
  }

  function valueText(k, idx) {
    if (k === NONE) return "";
    return idx < 0 ? "\u2014" : axes[k].values[idx];
  }

  function valueOf(entry, k) { return k === NONE ? 0 : entry.v[k]; }

  function isChunkAxis(k) { return chunkAxes.indexOf(k) >= 0; }

  function short(text, n) { return text.length > n ? text.slice(0, n - 1) + "\u2026" : text; }

  function axisFromSelect(select) {
    return select.value === "" ? NONE : axes.findIndex(function (a) { return a.name === select.value; });
  }

  function describe(entry, ks) {
    return ks.map(function (k) { return axes[k].name + ": " + valueText(k, entry.v[k]); }).join(" \u00b7 ");
  }

  function compareIdx(a, b) {
    for (var i = 0; i < a.length; i++) if (a[i] !== b[i]) return a[i] - b[i];
    return 0;
  }

  function passes(entry) {
    for (var k in state.filters) {
      if (entry.v[k] !== state.filters[k]) return false;
    }
    return true;
  }

  function showLines(id, cls, lines) {
    var box = $(id);
    box.textContent = "";
    lines.forEach(function (line) { box.appendChild(el("p", cls, line)); });
    box.hidden = lines.length === 0;
  }

  // ---- controls -------------------------------------------------------------------------

  function fillAxisSelect(select, ks, withNone, chosen) {
    select.textContent = "";
    if (withNone) select.appendChild(new Option("(none)", ""));
    ks.forEach(function (k) { select.appendChild(new Option(axes[k].label, axes[k].name)); });
    select.value = chosen === NONE ? "" : axes[chosen].name;
  }

  function firstOf(list, pred, exclude) {
    for (var i = 0; i < list.length; i++) {
      var k = list[i];
      if (k !== exclude && pred(axes[k])) return k;
    }
    return NONE;
  }

  function isKind(kind) { return function (a) { return a.kind === kind; }; }
  function any() { return true; }

  function defaultAxes() {
    // A chunk axis shows one value at a time: rows and columns go to the others first.
    var free = varying.filter(function (k) { return !isChunkAxis(k); });
    var col = firstOf(free, isKind("strength"), NONE);
    // A training run's checkpoints go down, as on its contact sheets.
    var row = firstOf(free, isKind("checkpoint"), col);
    if (row === NONE) row = firstOf(free, isKind("seed"), col);
    if (row === NONE) row = firstOf(free, isKind("prompt"), col);
    if (row === NONE) row = firstOf(free, any, col);
    if (col === NONE) col = firstOf(free, any, row);
    if (row === NONE) row = firstOf(varying, any, col);
    if (col === NONE) col = firstOf(varying, any, row);
    return [row, col];
  }

  function buildControls() {
    var rc = defaultAxes();
    fillAxisSelect($("row-axis"), varying, true, rc[0]);
    fillAxisSelect($("col-axis"), varying, true, rc[1]);
    // Sliders move along a strength, or along a run's checkpoints at a fixed strength.
    var strengths = varying.filter(function (k) {
      return axes[k].kind === "strength" || axes[k].kind === "checkpoint";
    });
    var sliderAxes = strengths.length ? strengths : varying;
    fillAxisSelect($("slider-axis"), sliderAxes, sliderAxes.length === 0,
      sliderAxes.length ? sliderAxes[0] : NONE);

    var box = $("filters");
    varying.forEach(function (k) {
      var axis = axes[k];
      var chunked = isChunkAxis(k);
      var label = el("label", "filter-label");
      label.appendChild(document.createTextNode(axis.name + " "));
      var select = el("select", "filter");
      select.dataset.axis = axis.name;
      if (chunked) select.dataset.chunk = "";
      else select.appendChild(new Option("all", "all"));
      // A chunk axis offers only the values its keys hold: each is a set of files.
      var held = chunked ? keyValues(chunkAxes.indexOf(k)) : null;
      if (held && held.has(NONE)) select.appendChild(new Option("\u2014", String(NONE)));
      axis.values.forEach(function (value, i) {
        if (held && !held.has(i)) return;
        var option = new Option(short(value, 60), String(i));
        option.title = value + (axis.counts ? " (" + axis.counts[i] + " images)" : "");
        select.appendChild(option);
      });
      if (chunked && k in state.filters) select.value = String(state.filters[k]);
      select.addEventListener("change", function () {
        if (select.value === "all") delete state.filters[k];
        else state.filters[k] = Number(select.value);
        resetPages();
        if (chunked) loadView();
        else render();
      });
      label.appendChild(select);
      box.appendChild(label);
    });

    $("row-axis").addEventListener("change", function () { swapIfSame("row-axis", "col-axis"); });
    $("col-axis").addEventListener("change", function () { swapIfSame("col-axis", "row-axis"); });
    $("slider-axis").addEventListener("change", function () { resetPages(); render(); });
    $("heatmap").addEventListener("change", function () {
      $("grid-view").classList.toggle("heat-on", $("heatmap").checked);
    });
    $("view-grid").addEventListener("click", function () { setView("grid"); });
    $("view-slider").addEventListener("click", function () { setView("slider"); });
    $("prev").addEventListener("click", function () { turn(-1); });
    $("next").addEventListener("click", function () { turn(1); });
    rememberAxes();
  }

  // The axis chosen for rows was already the columns' (or the reverse): swap them so the
  // grid keeps two distinct axes.
  var lastAxes = {};
  function rememberAxes() {
    lastAxes["row-axis"] = $("row-axis").value;
    lastAxes["col-axis"] = $("col-axis").value;
  }
  function swapIfSame(changed, other) {
    var select = $(changed);
    if (select.value !== "" && select.value === $(other).value) $(other).value = lastAxes[changed];
    rememberAxes();
    resetPages();
    render();
  }

  function keyValues(j) {
    var held = new Set();
    keys.forEach(function (key) { held.add(key.values[j]); });
    return held;
  }

  function setView(view) {
    state.view = view;
    $("view-grid").setAttribute("aria-pressed", String(view === "grid"));
    $("view-slider").setAttribute("aria-pressed", String(view === "slider"));
    document.querySelector(".grid-only").hidden = view !== "grid";
    document.querySelector(".slider-only").hidden = view !== "slider";
    render();
  }

  function resetPages() { state.page.grid = 0; state.page.slider = 0; }

  var pageCount = 1;
  function turn(step) {
    var page = state.page[state.view] + step;
    if (page < 0 || page >= pageCount) return;
    state.page[state.view] = page;
    render();
    window.scrollTo(0, 0);
  }

  // In a big gallery, what the loaded entries are out of.
  function ofAll() {
    if (!chunkAxes.length) return "";
    var names = chunkAxes.map(function (k) { return axes[k].name; }).join(" and ");
    return " (" + data.count + " images in all, one " + names + " at a time)";
  }

  function setPager(page, count, summary) {
    pageCount = count;
    $("page-info").textContent = "page " + (page + 1) + " of " + count;
    $("prev").disabled = page <= 0;
    $("next").disabled = page >= count - 1;
    $("summary").textContent = summary;
  }

  // ---- grid view ------------------------------------------------------------------------

  function gridModel() {
    var row = axisFromSelect($("row-axis"));
    var col = axisFromSelect($("col-axis"));
    var others = varying.filter(function (k) { return k !== row && k !== col; });
    var blocks = new Map();
    var colSet = new Set();
    var shown = 0;
    entries.forEach(function (entry) {
      if (!passes(entry)) return;
      shown++;
      var vals = others.map(function (k) { return entry.v[k]; });
      var key = vals.join(",");
      var block = blocks.get(key);
      if (!block) {
        block = { key: key, vals: vals, first: entry, rows: new Map() };
        blocks.set(key, block);
      }
      var r = valueOf(entry, row), c = valueOf(entry, col);
      colSet.add(c);
      if (!block.rows.has(r)) block.rows.set(r, new Map());
      var slots = block.rows.get(r);
      if (!slots.has(c)) slots.set(c, []);
      slots.get(c).push(entry);
    });
    var lines = [];
    Array.from(blocks.values())
      .sort(function (a, b) { return compareIdx(a.vals, b.vals); })
      .forEach(function (block) {
        Array.from(block.rows.keys()).sort(function (a, b) { return a - b; }).forEach(function (r) {
          lines.push({ block: block, row: r });
        });
      });
    var cols = Array.from(colSet).sort(function (a, b) { return a - b; });
    return { row: row, col: col, others: others, cols: cols, lines: lines, shown: shown };
  }

  function renderGrid() {
    var view = $("grid-view");
    view.textContent = "";
    var model = gridModel();
    var count = Math.max(1, Math.ceil(model.lines.length / ROWS_PER_PAGE));
    var page = Math.min(state.page.grid, count - 1);
    state.page.grid = page;
    setPager(page, count, model.shown + " images, " + model.lines.length + " rows" + ofAll());
    $("empty").hidden = model.shown > 0;

    var tbody = null, current = null;
    model.lines.slice(page * ROWS_PER_PAGE, (page + 1) * ROWS_PER_PAGE).forEach(function (line) {
      if (line.block !== current) {
        current = line.block;
        tbody = startBlock(view, model, current);
      }
      var tr = el("tr");
      var head = el("th", "row-head", valueText(model.row, line.row));
      head.dataset.value = valueText(model.row, line.row);
      head.scope = "row";
      tr.appendChild(head);
      var slots = current.rows.get(line.row);
      model.cols.forEach(function (c) {
        var td = el("td", "slot");
        var here = slots.get(c);
        if (!here) {
          td.classList.add("empty-slot");
          td.textContent = "missing";
        } else {
          here.forEach(function (entry) { td.appendChild(gridCell(entry, model, line.row, c)); });
        }
        tr.appendChild(td);
      });
      tbody.appendChild(tr);
    });
  }

  function startBlock(view, model, block) {
    var section = el("section", "block");
    section.dataset.block = block.key;
    if (model.others.length) section.appendChild(el("h2", "block-title", describe(block.first, model.others)));
    var table = el("table", "grid-table");
    var thead = el("thead");
    var tr = el("tr");
    var corner = el("th", "corner");
    corner.textContent = [model.row, model.col]
      .map(function (k) { return k === NONE ? "" : axes[k].name; })
      .join(" \u2193 / \u2192 ");
    tr.appendChild(corner);
    model.cols.forEach(function (c) {
      var th = el("th", "col-head", valueText(model.col, c));
      th.dataset.value = valueText(model.col, c);
      th.title = model.col === NONE ? "" : axes[model.col].label + " " + valueText(model.col, c);
      th.scope = "col";
      tr.appendChild(th);
    });
    thead.appendChild(tr);
    table.appendChild(thead);
    var tbody = el("tbody");
    table.appendChild(tbody);
    section.appendChild(table);
    view.appendChild(section);
    return tbody;
  }

  function gridCell(entry, model, r, c) {
    var cell = el("figure", "cell");
    cell.dataset.id = entry.id;
    cell.dataset.index = String(entry.index);
    cell.dataset.row = valueText(model.row, r);
    cell.dataset.col = valueText(model.col, c);
    var button = openButton(entry);
    var heat = el("div", "heat", entry.d0 == null ? "\u2013" : entry.d0.toFixed(2));
    if (entry.d0 != null) heat.style.backgroundColor = "rgba(220, 20, 30, " + (0.75 * Math.min(1, Math.max(0, entry.d0))).toFixed(3) + ")";
    button.appendChild(heat);
    cell.appendChild(button);
    var parts = [model.row, model.col].filter(function (k) { return k !== NONE; })
      .map(function (k) { return axes[k].name + " " + valueText(k, entry.v[k]); });
    cell.appendChild(el("figcaption", "caption", parts.join(" \u00b7 ") || entry.id));
    markFlags(cell, entry);
    return cell;
  }

  function openButton(entry) {
    var button = el("button", "open");
    button.type = "button";
    var img = el("img");
    img.loading = "lazy";
    img.decoding = "async";
    button.appendChild(img);
    setImage(button, entry);
    return button;
  }

  function setImage(button, entry) {
    var img = button.querySelector("img");
    img.alt = entry.id;
    img.src = entry.src;
    button.title = describe(entry, varying) || entry.id;
    button.dataset.index = String(entry.index);
  }

  function markFlags(node, entry) {
    var old = node.querySelector(".flag");
    if (old) old.remove();
    node.classList.toggle("flagged", entry.flags.length > 0);
    if (entry.flags.length) node.appendChild(el("div", "flag", "\u26a0 " + entry.flags.join(", ")));
  }

  // ---- slider view ----------------------------------------------------------------------

  function sliderModel() {
    var axis = axisFromSelect($("slider-axis"));
    var others = varying.filter(function (k) { return k !== axis; });
    var cards = new Map();
    entries.forEach(function (entry) {
      if (!passes(entry)) return;
      var vals = others.map(function (k) { return entry.v[k]; });
      var key = vals.join(",");
      if (!cards.has(key)) cards.set(key, { key: key, vals: vals, stops: [] });
      cards.get(key).stops.push(entry);
    });
    var list = Array.from(cards.values()).sort(function (a, b) { return compareIdx(a.vals, b.vals); });
    list.forEach(function (card) {
      // Stable: images sharing one slider value keep the order they were listed in.
      card.stops.sort(function (a, b) { return valueOf(a, axis) - valueOf(b, axis) || a.index - b.index; });
    });
    return { axis: axis, others: others, cards: list };
  }

  function renderSlider() {
    var view = $("slider-view");
    view.textContent = "";
    var model = sliderModel();
    var count = Math.max(1, Math.ceil(model.cards.length / CARDS_PER_PAGE));
    var page = Math.min(state.page.slider, count - 1);
    state.page.slider = page;
    setPager(page, count, model.cards.length + " sliders" + ofAll());
    $("empty").hidden = model.cards.length > 0;
    model.cards.slice(page * CARDS_PER_PAGE, (page + 1) * CARDS_PER_PAGE).forEach(function (card) {
      view.appendChild(sliderCard(card, model));
    });
  }

  function sliderCard(card, model) {
    var node = el("article", "slider-card");
    node.tabIndex = 0;
    node.dataset.key = card.key;
    if (model.others.length) node.appendChild(el("h2", null, describe(card.stops[0], model.others)));
    var holder = el("div", "slider-image");
    node.appendChild(holder);
    var range = el("input");
    range.type = "range";
    range.min = "0";
    range.max = String(card.stops.length - 1);
    range.step = "1";
    range.value = "0";
    range.disabled = card.stops.length < 2;
    range.setAttribute("aria-label", model.axis === NONE ? "image" : axes[model.axis].label);
    var label = el("div", "slider-label");
    node.appendChild(range);
    node.appendChild(label);

    // One button kept across moves, so a focused image keeps the focus while it slides.
    var button = openButton(card.stops[0]);
    holder.appendChild(button);
    function show() {
      var entry = card.stops[Number(range.value)];
      node.dataset.id = entry.id;
      setImage(button, entry);
      label.textContent = model.axis === NONE ? entry.id : axes[model.axis].name + " " + valueText(model.axis, entry.v[model.axis]);
      markFlags(node, entry);
    }
    range.addEventListener("input", show);
    node.addEventListener("keydown", function (ev) {
      // The focused range moves itself; the card moves it when the focus is elsewhere on it.
      if (ev.target === range || (ev.key !== "ArrowLeft" && ev.key !== "ArrowRight")) return;
      var next = Number(range.value) + (ev.key === "ArrowRight" ? 1 : -1);
      if (next < 0 || next > card.stops.length - 1) return;
      ev.preventDefault();
      range.value = String(next);
      show();
    });
    show();
    return node;
  }

  // ---- detail panel ---------------------------------------------------------------------

  var chunks = new Map();
  var waiting = new Map();
  var opened = null;

  window.farmDetail = function (k, list) {
    chunks.set(k, list);
    var callbacks = waiting.get(k) || [];
    waiting.delete(k);
    callbacks.forEach(function (cb) { cb(null); });
  };

  function loadChunk(k, cb) {
    if (chunks.has(k)) { cb(null); return; }
    if (waiting.has(k)) { waiting.get(k).push(cb); return; }
    waiting.set(k, [cb]);
    var script = document.createElement("script");
    script.src = "data/detail-" + String(k).padStart(4, "0") + ".js";
    script.onerror = function () {
      var callbacks = waiting.get(k) || [];
      waiting.delete(k);
      script.remove();
      callbacks.forEach(function (f) { f(new Error(script.src)); });
    };
    document.head.appendChild(script);
  }

  function openDetail(entry) {
    var dialog = $("detail");
    opened = entry;
    $("detail-title").textContent = entry.id + (varying.length ? " \u2014 " + describe(entry, varying) : "");
    var image = $("detail-image");
    image.textContent = "";
    var img = el("img");
    img.alt = entry.id;
    img.src = entry.src;
    image.appendChild(img);
    if (entry.flags.length) image.appendChild(el("div", "flag", "\u26a0 " + entry.flags.join(", ")));
    $("detail-infotext").textContent = "loading\u2026";
    $("detail-row").tBodies[0].textContent = "";
    if (!dialog.open) dialog.showModal();
    var k = Math.floor(entry.index / data.detail);
    loadChunk(k, function (err) {
      if (opened !== entry) return;
      if (err) {
        $("detail-infotext").textContent = "The details could not be loaded (" + err.message + ").";
        return;
      }
      var detail = chunks.get(k)[entry.index - k * data.detail] || {};
      $("detail-infotext").textContent = detail.infotext || "(no infotext)";
      fillRow(detail.row || {});
    });
  }

  function fillRow(row) {
    var tbody = $("detail-row").tBodies[0];
    Object.keys(row).forEach(function (key) {
      var value = row[key];
      var tr = el("tr");
      tr.dataset.key = key;
      tr.appendChild(el("th", null, key));
      tr.appendChild(el("td", null, typeof value === "string" ? value : JSON.stringify(value)));
      tbody.appendChild(tr);
    });
  }

  function closeDetail() {
    var dialog = $("detail");
    if (dialog.open) dialog.close();
  }

  function buildDetail() {
    var dialog = $("detail");
    $("detail-close").addEventListener("click", closeDetail);
    // A click on the backdrop lands on the dialog itself.
    dialog.addEventListener("click", function (ev) { if (ev.target === dialog) closeDetail(); });
    dialog.addEventListener("close", function () {
      opened = null;
      $("detail-image").textContent = "";
    });
    document.addEventListener("keydown", function (ev) { if (ev.key === "Escape") closeDetail(); });
    document.querySelector("main").addEventListener("click", function (ev) {
      var button = ev.target.closest(".open");
      var entry = button && byIndex.get(Number(button.dataset.index));
      if (entry) openDetail(entry);
    });
  }

  // ---- entry pages ----------------------------------------------------------------------

  var pages = new Map();    // page number -> its entries, once its file has run
  var scripts = new Map();  // page number -> its <script>, from the moment it is added
  var wanted = null;        // { list, done } of the view waiting for its pages

  window.farmEntries = function (p, start, rows) {
    pages.set(p, rows.map(function (row, i) { return toEntry(row, start + i); }));
    settle();
  };

  function toEntry(row, index) {
    return {
      index: index,
      id: row[0],
      src: row[1] || srcTemplate[0] + row[0] + srcTemplate[1],
      v: row[2],
      flags: row[3] || [],
      d0: row[4] == null ? null : row[4]
    };
  }

  // The pages the view needs: its chunk key's, or all of them when there is no chunk axis.
  function viewPages() {
    var chosen = keys.map(function (_, i) { return i; });
    if (chunkAxes.length) {
      var i = keyAt.get(chunkAxes.map(function (k) { return state.filters[k]; }).join(","));
      chosen = i === undefined ? [] : [i];
    }
    var list = [];
    chosen.forEach(function (i) {
      for (var p = keys[i].first; p < keys[i].first + keys[i].pages; p++) list.push(p);
    });
    return list;
  }

  function need(list, done) {
    wanted = { list: list, done: done };
    list.forEach(function (p) {
      if (pages.has(p) || scripts.has(p)) return;
      var script = document.createElement("script");
      script.src = "data/entries-" + String(p).padStart(4, "0") + ".js";
      script.onerror = function () {
        scripts.delete(p);
        script.remove();
        if (!wanted || wanted.list.indexOf(p) < 0) return;
        var failed = wanted;
        wanted = null;
        failed.done(new Error(script.src));
      };
      scripts.set(p, script);
      document.head.appendChild(script);
    });
    settle();
  }

  function settle() {
    if (!wanted || !wanted.list.every(function (p) { return pages.has(p); })) return;
    var ready = wanted;
    wanted = null;
    ready.done(null);
  }

  function loadView() {
    var list = viewPages();
    var main = document.querySelector("main");
    main.setAttribute("aria-busy", "true");
    $("summary").textContent = "loading\u2026";
    need(list, function (err) {
      main.setAttribute("aria-busy", "false");
      if (err) addNote("The gallery's data (" + err.message + ") could not be loaded.");
      // Only the shown pages stay: the page holds one key's entries, whatever the job's size.
      var keep = new Set(list);
      Array.from(scripts.keys()).forEach(function (p) {
        if (keep.has(p) || !pages.has(p)) return;
        pages.delete(p);
        scripts.get(p).remove();
        scripts.delete(p);
      });
      entries = [];
      byIndex = new Map();
      list.forEach(function (p) {
        (pages.get(p) || []).forEach(function (entry) {
          entries.push(entry);
          byIndex.set(entry.index, entry);
        });
      });
      render();
    });
  }

  function addNote(text) {
    $("notes").appendChild(el("p", "note", text));
    $("notes").hidden = false;
  }

  // ---- start ----------------------------------------------------------------------------

  function render() {
    if (wanted) return;  // the pages on their way render the view when they arrive
    var grid = state.view === "grid";
    $("grid-view").hidden = !grid;
    $("slider-view").hidden = grid;
    // Only the shown view holds elements, so a page's <img>s are all the DOM has.
    if (grid) { $("slider-view").textContent = ""; renderGrid(); }
    else { $("grid-view").textContent = ""; renderSlider(); }
  }

  showLines("headlines", "headline", data.headlines || []);
  showLines("notes", "note", data.notes || []);
  buildControls();
  buildDetail();
  loadView();
})();
