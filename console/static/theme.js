// Before the first paint: the theme the person chose, else the system's (no flash).
(function () {
  var t = null;
  try { t = localStorage.getItem("cs-theme"); } catch (e) { /* private mode */ }
  if (t !== "light" && t !== "dark") {
    t = window.matchMedia && window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light";
  }
  document.documentElement.dataset.theme = t;
})();
