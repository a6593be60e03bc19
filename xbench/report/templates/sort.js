document.querySelectorAll("table.sortable").forEach(function (table) {
  table.querySelectorAll("th.sortable").forEach(function (th, column) {
    th.addEventListener("click", function () {
      var body = table.tBodies[0], descending = th.dataset.order !== "desc";
      var rows = Array.from(body.rows).filter(function (r) { return !r.classList.contains("reference"); });
      var fixed = Array.from(body.rows).filter(function (r) { return r.classList.contains("reference"); });
      rows.sort(function (a, b) {
        var x = a.cells[column].dataset.value, y = b.cells[column].dataset.value;
        if (x === undefined || y === undefined) { x = a.cells[column].textContent; y = b.cells[column].textContent;
          return descending ? y.localeCompare(x) : x.localeCompare(y); }
        x = x === "" ? -Infinity : +x; y = y === "" ? -Infinity : +y;
        return descending ? y - x : x - y;
      });
      rows.concat(fixed).forEach(function (r) { body.appendChild(r); });
      table.querySelectorAll("th").forEach(function (h) { delete h.dataset.order; });
      th.dataset.order = descending ? "desc" : "asc";
    });
  });
});
