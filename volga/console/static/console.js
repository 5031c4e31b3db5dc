// Volga console: catalog search, live job refresh, lookup form. No dependencies.
(function () {
  var search = document.getElementById("search");
  if (search) {
    var filter = function () {
      var words = search.value.toLowerCase().split(/\s+/).filter(Boolean);
      var shown = 0;
      document.querySelectorAll("tr[data-search]").forEach(function (row) {
        var text = row.getAttribute("data-search");
        var ok = words.every(function (w) { return text.indexOf(w) >= 0; });
        row.style.display = ok ? "" : "none";
        if (ok) shown += 1;
      });
      var count = document.getElementById("shown");
      if (count) count.textContent = shown;
    };
    search.addEventListener("input", filter);
    filter();
  }
  var live = document.getElementById("live");
  if (live) {
    setInterval(function () {
      fetch(live.getAttribute("data-src"), { credentials: "same-origin" })
        .then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) { if (html !== null) live.innerHTML = html; })
        .catch(function () {});
    }, 2000);
  }
  var pick = document.getElementById("feature-select");
  if (pick) {
    pick.addEventListener("change", function () {
      window.location = "?feature=" + encodeURIComponent(pick.value);
    });
  }
})();
