(function () {
  "use strict";
  var root = document.getElementById("explorer");
  if (!root) { return; }
  var D = window.XBENCH_EXPLORER;
  if (!D) {
    root.querySelector(".ex-status").textContent = "The explorer's files (explorer/ next to this page) did not load: " +
      "keep report.html and explorer/ together.";
    return;
  }
  var PAGE = 24, state = { page: 0, order: [] };
  var $ = function (id) { return document.getElementById(id); };
  var el = function (tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) { e.className = cls; }
    if (text !== undefined) { e.textContent = text; }
    return e;
  };
  var metricInfo = {};
  D.metrics.forEach(function (m) { metricInfo[m.name] = m; });
  var format = function (metric, v) {
    if (v === null || v === undefined) { return "–"; }
    return metricInfo[metric] && metricInfo[metric].percent ? (100 * v).toFixed(1) : v.toFixed(3);
  };
  var option = function (select, value, text) {
    var o = el("option", "", text); o.value = value; select.appendChild(o);
  };

  // ---- controls
  var classSel = $("ex-class"), modelSel = $("ex-model"), correctSel = $("ex-correct"), sortSel = $("ex-sort"),
    aSel = $("ex-a"), bSel = $("ex-b"), orderSel = $("ex-order"), methodsBox = $("ex-methods"), truthBox = $("ex-truth");
  option(classSel, "", "every class");
  D.classes.forEach(function (c) { option(classSel, String(c.label), c.name); });
  D.models.forEach(function (m) { option(modelSel, m, m); });
  option(sortSel, "index", "image number");
  D.metrics.forEach(function (m) { option(sortSel, "metric:" + m.name, m.name + " of method A"); });
  D.metrics.forEach(function (m) { option(sortSel, "gap:" + m.name, m.name + ": |A − B|"); });
  option(sortSel, "disagreement", "map disagreement of A and B");
  D.methods.forEach(function (m, k) {
    option(aSel, String(k), m.label); option(bSel, String(k), m.label);
    var label = el("label"), box = el("input");
    box.type = "checkbox"; box.checked = true; box.value = String(k); box.dataset.method = m.label;
    label.appendChild(box); label.appendChild(document.createTextNode(" " + m.label));
    methodsBox.appendChild(label);
  });
  if (D.methods.length > 1) { bSel.value = "1"; }

  var pairIndex = function (a, b) {
    for (var p = 0; p < D.pairs.length; p++) {
      if ((D.pairs[p][0] === a && D.pairs[p][1] === b) || (D.pairs[p][0] === b && D.pairs[p][1] === a)) { return p; }
    }
    return -1;
  };
  var shownMethods = function () {
    return Array.from(methodsBox.querySelectorAll("input:checked")).map(function (b) { return +b.value; });
  };

  // ---- filter and sort: state.order holds row numbers of data.js's arrays
  var recompute = function () {
    var cls = classSel.value, model = modelSel.value, correct = correctSel.value;
    var a = +aSel.value, b = +bSel.value, key = sortSel.value, descending = orderSel.value === "desc";
    var rows = [];
    for (var r = 0; r < D.index.length; r++) {
      if (cls !== "" && String(D.label[r]) !== cls) { continue; }
      if (correct !== "" && D.correct[model]) {
        var hit = D.correct[model][r];
        if (hit === null || (correct === "correct") !== hit) { continue; }
      }
      rows.push(r);
    }
    var value;
    if (key === "index") { value = function (r) { return D.index[r]; }; }
    else if (key === "disagreement") {
      var p = pairIndex(a, b);
      value = function (r) { return p < 0 ? null : D.disagreement[p][r]; };
    } else {
      var metric = key.slice(key.indexOf(":") + 1), gap = key.indexOf("gap:") === 0;
      var sa = D.scores[D.methods[a].label][metric], sb = D.scores[D.methods[b].label][metric];
      value = gap ? function (r) { return sa[r] === null || sb[r] === null ? null : Math.abs(sa[r] - sb[r]); }
        : function (r) { return sa[r]; };
    }
    rows.sort(function (x, y) {  // unscored images last, whatever the order
      var vx = value(x), vy = value(y);
      if (vx === null || vy === null) { return (vx === null) - (vy === null) || x - y; }
      return (descending ? vy - vx : vx - vy) || x - y;
    });
    state.order = rows; state.page = 0; state.value = value;
    render();
  };

  // ---- tiles: the image, with one RGBA tile of the row's strip laid over it
  var tile = function (r, k, size, caption, strip, tiles) {  // k: the strip's tile (0 the ground truth), or null
    var box = el("div", "ex-tile"); box.style.width = box.style.height = size + "px";
    var img = el("img"); img.loading = "lazy"; img.alt = ""; img.src = "explorer/img/" + D.index[r] + ".jpg";
    img.width = img.height = size; box.appendChild(img);
    if (k !== null) {
      var over = el("div", "ex-over");
      over.style.backgroundImage = "url(" + (strip || "explorer/map/" + D.index[r] + ".png") + ")";
      var n = tiles || D.tiles;
      over.style.backgroundSize = (n * 100) + "% 100%";
      over.style.backgroundPosition = (n > 1 ? (k / (n - 1)) * 100 : 0) + "% 0";
      box.appendChild(over);
    }
    if (k === 0 && !strip) {
      D.box[r].forEach(function (b) {
        var rect = el("div", "ex-box");
        rect.style.left = (100 * b[0]) + "%"; rect.style.top = (100 * b[1]) + "%";
        rect.style.width = (100 * (b[2] - b[0])) + "%"; rect.style.height = (100 * (b[3] - b[1])) + "%";
        box.appendChild(rect);
      });
    }
    var figure = el("figure", "ex-figure"); figure.style.width = size + "px"; figure.appendChild(box);
    if (caption) { figure.appendChild(el("figcaption", "", caption)); }
    return figure;
  };

  var verdicts = function (r) {
    return D.models.map(function (m) {
      var hit = D.correct[m][r];
      return m + ": " + (D.prediction[m][r] || "?") + (hit === null ? "" : hit ? " ✓" : " ✗");
    }).join(" · ");
  };

  var render = function () {
    var grid = $("ex-grid"), shown = shownMethods(), start = state.page * PAGE;
    var page = state.order.slice(start, start + PAGE), key = sortSel.value;
    grid.textContent = "";
    page.forEach(function (r) {
      var card = el("div", "ex-card"); card.tabIndex = 0; card.dataset.index = D.index[r];
      var head = el("div", "ex-head", "#" + D.index[r] + " " + D.class_name[r]);
      if (key !== "index") { head.appendChild(el("span", "ex-value", " " + format(key.slice(key.indexOf(":") + 1), state.value(r)))); }
      card.appendChild(head);
      card.appendChild(el("div", "ex-verdict", verdicts(r)));
      var strip = el("div", "ex-strip");
      strip.appendChild(tile(r, truthBox.checked ? 0 : null, 84, "image"));
      shown.forEach(function (k) {
        var m = D.methods[k].label, first = D.metrics[0] ? D.metrics[0].name : null;
        strip.appendChild(tile(r, k + 1, 84, m + (first ? " " + format(first, D.scores[m][first][r]) : "")));
      });
      card.appendChild(strip);
      card.addEventListener("click", function () { openLarge(start + page.indexOf(r)); });
      card.addEventListener("keydown", function (e) { if (e.key === "Enter") { openLarge(start + page.indexOf(r)); } });
      grid.appendChild(card);
    });
    var pages = Math.max(1, Math.ceil(state.order.length / PAGE));
    $("ex-count").textContent = state.order.length + " of " + D.index.length + " images; page " + (state.page + 1) +
      " of " + pages;
    $("ex-prev").disabled = state.page === 0; $("ex-next").disabled = state.page >= pages - 1;
  };

  // ---- the large view: every method side by side, the scores, INTR/ICN heads
  var modal = $("ex-modal"), current = -1;
  var openLarge = function (position) {
    current = position;
    var r = state.order[position], body = $("ex-large");
    body.textContent = "";
    body.appendChild(el("h3", "", "#" + D.index[r] + " " + D.class_name[r]));
    body.appendChild(el("p", "ex-verdict", verdicts(r)));
    var strip = el("div", "ex-strip");
    strip.appendChild(tile(r, 0, 224, "ground truth"));
    D.methods.forEach(function (m, k) {
      var lines = D.metrics.map(function (x) { return x.name + " " + format(x.name, D.scores[m.label][x.name][r]); });
      var fig = tile(r, k + 1, 224, m.label);
      var list = el("div", "ex-scores", lines.join("\n")); fig.appendChild(list);
      strip.appendChild(fig);
    });
    body.appendChild(strip);
    Object.keys(D.heads).forEach(function (model) {
      var entry = D.heads[model];
      if (entry.images.indexOf(D.index[r]) < 0) { return; }
      body.appendChild(el("h4", "", model + ": each head's cross-attention for the true class"));
      var heads = el("div", "ex-strip");
      for (var h = 0; h < entry.heads; h++) {
        heads.appendChild(tile(r, h, 140, "head " + (h + 1), "explorer/heads/" + model + "_" + D.index[r] + ".png", entry.heads));
      }
      body.appendChild(heads);
    });
    modal.hidden = false; $("ex-close").focus();
  };
  var close = function () { modal.hidden = true; current = -1; };
  $("ex-close").addEventListener("click", close);
  modal.addEventListener("click", function (e) { if (e.target === modal) { close(); } });
  document.addEventListener("keydown", function (e) {
    if (modal.hidden) { return; }
    if (e.key === "Escape") { close(); }
    if (e.key === "ArrowRight" && current < state.order.length - 1) { openLarge(current + 1); }
    if (e.key === "ArrowLeft" && current > 0) { openLarge(current - 1); }
  });

  $("ex-prev").addEventListener("click", function () { state.page--; render(); });
  $("ex-next").addEventListener("click", function () { state.page++; render(); });
  sortSel.addEventListener("change", function () { orderSel.value = sortSel.value === "index" ? "asc" : "desc"; });
  [classSel, modelSel, correctSel, sortSel, aSel, bSel, orderSel].forEach(function (s) {
    s.addEventListener("change", recompute);
  });
  methodsBox.addEventListener("change", render);
  truthBox.addEventListener("change", render);
  root.querySelector(".ex-status").textContent = D.index.length + " images, " + D.methods.length + " methods.";
  recompute();
})();
