// Chain and order pages: one confirmation dialog (with a reason) for every operator action
// (stop / start a chain, a node's action; suspend, resume, reset, move, remove an order).
// A form.confirm-action names its target in data-target; the button pressed is the action.
// Without this script the forms post straight away (no reason asked).
(function () {
  "use strict";

  function dialog() { return document.getElementById("confirm-dialog"); }

  document.addEventListener("submit", function (evt) {
    var form = evt.target;
    if (!form.classList || !form.classList.contains("confirm-action")) return;
    var box = dialog();
    if (!box || typeof box.showModal !== "function") return;  // post as is
    var submitter = evt.submitter;
    if (!submitter || submitter.name !== "action") return;
    evt.preventDefault();
    var confirmForm = document.getElementById("confirm-form");
    confirmForm.setAttribute("action", form.getAttribute("action"));
    document.getElementById("confirm-action").value = submitter.value;
    // The form's own choices (the state of a move) go along as they are now.
    var holder = document.getElementById("confirm-fields");
    holder.textContent = "";
    var extra = "";
    form.querySelectorAll("select[name]").forEach(function (select) {
      var input = document.createElement("input");
      input.type = "hidden";
      input.name = select.name;
      input.value = select.value;
      holder.appendChild(input);
      if (submitter.value === "move") extra = " to state " + select.value;
    });
    var verb = submitter.dataset.verb || submitter.textContent.trim();
    var target = form.dataset.target || "";
    document.getElementById("confirm-title").textContent = verb + " " + target + extra + "?";
    document.getElementById("confirm-summary").textContent =
      submitter.dataset.explain || (verb + ": " + target + extra + ".");
    document.getElementById("confirm-go").textContent = verb;
    box.showModal();
    document.getElementById("confirm-reason").focus();
  });

  document.addEventListener("click", function (evt) {
    if (evt.target && evt.target.id === "confirm-cancel") dialog().close();
  });
})();
