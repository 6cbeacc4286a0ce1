// Draws every chart of a page from the JSON spec beside it (no network: data is inline).
// window.__charts records how many charts were expected, drawn and failed, when the last one
// settled (performance.now(), ms after navigation started), and keeps each Vega
// view so a browser test can count the marks in its scenegraph.
(function () {
  "use strict";
  var dark = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches;
  var nodes = document.querySelectorAll('script[type="application/json"][data-chart]');
  var state = { expected: nodes.length, drawn: 0, errors: [], views: [], finished: null };
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
})();
