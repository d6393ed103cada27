// Busy states: a form marked data-busy disables its button and says it is working until the
// next page arrives (an export can take a while). Every page works without this script.
document.addEventListener("submit", function (event) {
  var form = event.target;
  if (!form.hasAttribute("data-busy")) return;
  var button = form.querySelector("button[type=submit]");
  if (!button) return;
  button.setAttribute("aria-busy", "true");
  button.dataset.label = button.textContent;
  button.textContent = form.getAttribute("data-busy") || "Working…";
  setTimeout(function () { button.disabled = true; }, 0);
});
// Leaving a page and coming back (the download of an export): the button is ready again.
window.addEventListener("pageshow", function () {
  document.querySelectorAll("button[aria-busy=true]").forEach(function (b) {
    b.removeAttribute("aria-busy"); b.disabled = false;
    if (b.dataset.label) b.textContent = b.dataset.label;
  });
});
