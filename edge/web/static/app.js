// Drag and drop on a desktop: a file dropped on the form goes into the film field and is sent.
// Served from the app ('self'): the Content-Security-Policy allows no inline script.
"use strict";
document.addEventListener("DOMContentLoaded", function () {
  var form = document.getElementById("upload-form");
  var drop = document.getElementById("drop");
  var input = document.getElementById("film");
  if (!form || !drop || !input) { return; }
  ["dragenter", "dragover"].forEach(function (name) {
    form.addEventListener(name, function (event) { event.preventDefault(); drop.classList.add("over"); });
  });
  ["dragleave", "drop"].forEach(function (name) {
    form.addEventListener(name, function () { drop.classList.remove("over"); });
  });
  form.addEventListener("drop", function (event) {
    event.preventDefault();
    if (!event.dataTransfer || event.dataTransfer.files.length === 0) { return; }
    input.files = event.dataTransfer.files;
    form.submit();
  });
  form.addEventListener("submit", function () {
    var button = document.getElementById("submit");
    if (button) { button.disabled = true; button.textContent = "Scoring…"; }
  });
});
