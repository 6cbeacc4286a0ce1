// Draws every chart of a page from the JSON spec beside it (no network: data is inline).
// window.__charts records how many charts were expected, drawn and failed, when the last one
// settled (performance.now(), ms after navigation started), and keeps each Vega
// view so a browser test can count the marks in its scenegraph.
(function () {
  "use strict";
  var dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  var nodes = document.querySelectorAll('script[type="application/json"][data-chart]');
  var state = { expected: nodes.length, drawn: 0, errors: [], views: [], byId: {}, finished: null };
  function settle() {
    if (state.drawn + state.errors.length === state.expected) { state.finished = performance.now(); }
  }
  settle();
  window.__charts = state;
  var options = { renderer: "canvas", actions: false, config: { background: null } };
  if (dark) { options.theme = "dark"; }
  Array.prototype.forEach.call(nodes, function (node) {
    var target = document.getElementById(node.getAttribute("data-chart"));
    vegaEmbed(target, JSON.parse(node.textContent), options).then(function (result) {
      state.views.push(result.view);
      state.byId[node.getAttribute("data-chart")] = result.view;
      state.drawn += 1;
      settle();
    }).catch(function (error) {
      state.errors.push(String(error));
      target.textContent = "This chart could not be drawn: " + error;
      settle();
    });
  });
  Array.prototype.forEach.call(document.querySelectorAll("select[data-navigate]"), function (select) {
    select.addEventListener("change", function () { window.location.href = select.value; });
  });
  // A series page's play button: steps a chart's slider parameter through every checkpoint, once.
  Array.prototype.forEach.call(document.querySelectorAll("button[data-play]"), function (button) {
    var timer = null;
    function stop() { clearInterval(timer); timer = null; button.textContent = "\u25b6 play"; }
    button.addEventListener("click", function () {
      var view = state.byId[button.getAttribute("data-play")];
      var name = button.getAttribute("data-param"), count = +button.getAttribute("data-count");
      if (!view || timer) { stop(); return; }
      var k = view.signal(name) >= count - 1 ? 0 : view.signal(name) + 1;
      view.signal(name, k).runAsync();
      button.textContent = "\u275a\u275a pause";
      timer = setInterval(function () {
        if (k >= count - 1) { stop(); return; }
        k += 1;
        view.signal(name, k).runAsync();
      }, 700);
    });
  });
})();

// A token window's cell view and "find similar" (reporter/report/cell_view.py gathers the data):
// the text coloured by one unit, the units that vary most, and spans of the sampled windows where
// the units on over a selected span are on too. window.__cells exposes the search for tests.
(function () {
  "use strict";
  var node = document.getElementById("cell-data");
  if (!node) { return; }
  var data = JSON.parse(node.textContent);
  var cells = data.cells, similar = window.__similar, TOP = 8, SHOWN = 10;
  var layerSelect = document.getElementById("cell-layer");
  var gateSelect = document.getElementById("cell-gate");
  var unitSelect = document.getElementById("cell-unit");
  var state = { results: [], status: "" };
  window.__cells = state;

  function bytes(text) {
    var raw = atob(text), out = new Uint8Array(raw.length);
    for (var i = 0; i < raw.length; i++) { out[i] = raw.charCodeAt(i); }
    return out;
  }
  function values(gate) {
    if (!gate.values) {
      var codes = new Int8Array(bytes(gate.q).buffer);
      gate.values = new Float32Array(codes.length);
      for (var i = 0; i < codes.length; i++) { gate.values[i] = codes[i] / 127 * gate.scale; }
    }
    return gate.values;
  }
  function layer() { return cells.layers[+layerSelect.value]; }
  function gate() { return layer().gates[gateSelect.value]; }
  function unitName(of, unit) {
    return of.units > of.hidden ? "dir " + Math.floor(unit / of.hidden) + " unit " + (unit % of.hidden) : "unit " + unit;
  }
  function shown(token) { return token.replace(/\n/g, "↵").replace(/\t/g, "⇥").replace(/ /g, "\u00a0"); }
  function colour(value, of) {
    var signed = of.family === "sigmoid" ? 2 * value - 1 : value / (of.family === "tanh" ? 1 : of.scale);
    var alpha = Math.min(1, Math.abs(signed)) * 0.85;
    return signed >= 0 ? "rgba(214, 39, 40, " + alpha + ")" : "rgba(31, 119, 180, " + alpha + ")";
  }
  function line(target, unit) {
    var of = gate(), all = values(of), units = layer().units, parts = document.createDocumentFragment();
    cells.tokens.forEach(function (token, t) {
      var value = all[t * units + unit], span = document.createElement("span");
      span.textContent = shown(token);
      span.setAttribute("data-t", t);
      span.style.background = colour(value, of);
      span.title = "step " + t + " " + JSON.stringify(token) + ": " + value.toFixed(3);
      parts.appendChild(span);
      if (token.indexOf("\n") >= 0) { parts.appendChild(document.createElement("br")); }
    });
    target.replaceChildren(parts);
  }
  function spread(unit) {
    var all = values(gate()), units = layer().units, steps = cells.tokens.length, sum = 0, squares = 0;
    for (var t = 0; t < steps; t++) { var v = all[t * units + unit]; sum += v; squares += v * v; }
    var mean = sum / steps;
    return Math.sqrt(Math.max(0, squares / steps - mean * mean));
  }
  function draw() {
    var of = layer(), unit = +unitSelect.value;
    document.getElementById("cell-picked-label").textContent = unitName(of, unit) + " · " + gateSelect.value;
    line(document.getElementById("cell-picked"), unit);
    var ranked = [];
    for (var u = 0; u < of.units; u++) { ranked.push([spread(u), u]); }
    ranked.sort(function (a, b) { return b[0] - a[0] || a[1] - b[1]; });
    var rows = document.createDocumentFragment();
    ranked.slice(0, TOP).forEach(function (pair) {
      var row = document.createElement("div"), label = document.createElement("button"), text = document.createElement("div");
      row.className = "cell-row";
      label.className = "cell-label";
      label.type = "button";
      label.textContent = unitName(of, pair[1]) + " · sd " + pair[0].toFixed(2);
      label.addEventListener("click", function () { unitSelect.value = pair[1]; draw(); });
      text.className = "cell-line";
      line(text, pair[1]);
      row.appendChild(label);
      row.appendChild(text);
      rows.appendChild(row);
    });
    document.getElementById("cell-top").replaceChildren(rows);
    return ranked;
  }
  function fillLayer(pickTop) {
    var of = layer();
    gateSelect.replaceChildren();
    Object.keys(of.gates).forEach(function (name) { gateSelect.add(new Option(name, name)); });
    gateSelect.value = of.gates.h ? "h" : Object.keys(of.gates)[0];
    unitSelect.replaceChildren();
    for (var u = 0; u < of.units; u++) { unitSelect.add(new Option(unitName(of, u), u)); }
    unitSelect.value = 0;
    var ranked = draw();
    if (pickTop) { unitSelect.value = ranked[0][1]; draw(); }
  }
  cells.layers.forEach(function (of, k) { layerSelect.add(new Option(of.name, k)); });
  layerSelect.addEventListener("change", function () { fillLayer(true); });
  gateSelect.addEventListener("change", draw);
  unitSelect.addEventListener("change", draw);
  fillLayer(true);

  // Find similar: units on throughout the selected steps, matched by Jaccard similarity.
  var ones = new Uint8Array(256);
  for (var b = 0; b < 256; b++) { ones[b] = (b & 1) + ones[b >> 1]; }
  function throughout(bits, rowBytes, units, start, length) {
    var mask = new Uint8Array(rowBytes).fill(255);
    for (var t = start; t < start + length; t++) {
      for (var k = 0; k < rowBytes; k++) { mask[k] &= bits[t * rowBytes + k]; }
    }
    if (units % 8) { mask[rowBytes - 1] &= (1 << (units % 8)) - 1; }
    return mask;
  }
  function count(a, b, both) {
    var n = 0;
    for (var k = 0; k < a.length; k++) { n += ones[both ? a[k] & b[k] : a[k] | b[k]]; }
    return n;
  }
  function snippet(tokens, start, length) {
    var code = document.createElement("code"), mark = document.createElement("mark");
    var before = tokens.slice(Math.max(0, start - 20), start).join(""), after = tokens.slice(start + length, start + length + 12).join("");
    var flat = function (text) { return text.replace(/\n/g, "↵").replace(/\t/g, "⇥"); };
    mark.textContent = flat(tokens.slice(start, start + length).join(""));
    code.append(flat(before), mark, flat(after));
    return code;
  }
  function search(first, last) {
    var of = layer(), rowBytes = Math.ceil(of.units / 8), length = last - first + 1;
    var mine = similar.windows.filter(function (w) { return w.window === data.window; })[0];
    var status = document.getElementById("similar-status"), list = document.getElementById("similar-results");
    if (!mine || !mine.bits[of.name]) {
      state.results = [];
      state.status = "Layer " + of.name + " has no hidden state to match on in this window.";
      status.textContent = state.status;
      list.replaceChildren();
      return state;
    }
    var query = throughout(bytes(mine.bits[of.name]), rowBytes, of.units, first, length), wanted = count(query, query, true);
    var onUnits = [];
    for (var u = 0; u < of.units && onUnits.length < 12; u++) { if ((query[u >> 3] >> (u & 7)) & 1) { onUnits.push(u); } }
    var found = [];
    similar.windows.forEach(function (w) {
      if (!w.bits[of.name]) { return; }
      var bits = bytes(w.bits[of.name]);
      for (var start = 0; start + length <= w.tokens.length; start++) {
        if (w.window === data.window && start <= last && start + length - 1 >= first) { continue; }
        var there = throughout(bits, rowBytes, of.units, start, length), shared = count(query, there, true);
        if (shared > 0) { found.push({ window: w, start: start, shared: shared, score: shared / count(query, there, false) }); }
      }
    });
    found.sort(function (a, b) { return b.shared - a.shared || b.score - a.score || a.window.window - b.window.window || a.start - b.start; });
    var kept = [];
    found.forEach(function (hit) {
      var overlaps = kept.some(function (k) {
        return k.window === hit.window && hit.start < k.start + length && k.start < hit.start + length;
      });
      if (!overlaps && kept.length < SHOWN) { kept.push(hit); }
    });
    state.results = kept.map(function (hit) { return { window: hit.window.window, start: hit.start, shared: hit.shared, score: hit.score }; });
    state.status = wanted === 0
      ? "No unit of " + of.name + " has h on over all of steps " + first + "–" + last + ": select fewer tokens, or pick another layer."
      : wanted + (wanted > 1 ? " units of " : " unit of ") + of.name + (wanted > 1 ? " have" : " has") + " h on over steps " + first + "–" + last + " (" +
        onUnits.map(function (u) { return unitName(of, u); }).join(", ") + (wanted > onUnits.length ? ", …" : "") + "); " +
        (kept.length ? "the best " + kept.length + " spans of the sampled windows where they are on too:" : "no sampled window has them on over a span as long.");
    status.textContent = state.status;
    list.replaceChildren();
    if (wanted === 0) { return state; }
    kept.forEach(function (hit) {
      var item = document.createElement("li"), link = document.createElement("a");
      link.href = hit.window.page;
      link.textContent = "window " + hit.window.window;
      item.append(link, " (" + hit.window.reason + "), steps " + hit.start + "–" + (hit.start + length - 1) + ": " +
        hit.shared + " of the " + wanted + " units on, Jaccard " + hit.score.toFixed(2) + " ", snippet(hit.window.tokens, hit.start, length));
      list.appendChild(item);
    });
    return state;
  }
  function stepOf(node) {
    while (node && !(node.getAttribute && node.getAttribute("data-t") !== null)) { node = node.parentNode; }
    return node ? +node.getAttribute("data-t") : null;
  }
  if (!similar) { document.getElementById("find-similar").hidden = true; return; }
  document.getElementById("cell-view").addEventListener("mouseup", function () {
    var selection = window.getSelection();
    if (!selection || selection.isCollapsed) { return; }
    var a = stepOf(selection.anchorNode), b = stepOf(selection.focusNode);
    if (a !== null && b !== null) { search(Math.min(a, b), Math.max(a, b)); }
  });
  state.search = search;
})();
