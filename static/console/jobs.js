// Jobs pages: one confirmation dialog (with a reason) for every pause / resume / run now,
// per row or in bulk; select-all; live rows of the jobs list swapped in where shown.
// Without this script the forms post straight away (no reason asked).
(function () {
  "use strict";
  var LABELS = {pause: "Pause", resume: "Resume", run_now: "Run now"};
  function formatTimes(root) {  // console.js's, for rows moved in by hand
    if (window.opscenter && window.opscenter.formatTimes) window.opscenter.formatTimes(root);
  }

  var pending = [];  // the ids the open dialog is about; sent as job=… when confirmed

  function dialog() { return document.getElementById("confirm-dialog"); }

  function selectedJobs(form) {
    if (form.id === "bulk-form") {
      return Array.prototype.map.call(
        document.querySelectorAll('input[name="job"][form="bulk-form"]:checked'),
        function (box) {
          var row = box.closest("tr");
          var link = row && row.querySelector("td a");
          return {id: box.value, name: link ? link.textContent : box.value};
        });
    }
    var id = form.dataset.jobId;
    return id ? [{id: id, name: form.dataset.jobName || id}] : [];
  }

  function open(form, action) {
    var box = dialog();
    var jobs = selectedJobs(form);
    if (!jobs.length) {
      var status = document.getElementById("bulk-status");
      if (status) status.textContent = "Select at least one job first.";
      return;
    }
    document.getElementById("confirm-action").value = action;
    pending = jobs.map(function (job) { return job.id; });
    var names = jobs.slice(0, 10).map(function (job) { return job.name; }).join(", ");
    if (jobs.length > 10) names += " and " + (jobs.length - 10) + " more";
    document.getElementById("confirm-title").textContent =
      LABELS[action] + (jobs.length === 1 ? " 1 job?" : " " + jobs.length + " jobs?");
    document.getElementById("confirm-summary").textContent =
      LABELS[action] + ": " + names + ".";
    document.getElementById("confirm-go").textContent = LABELS[action];
    box.showModal();
    document.getElementById("confirm-reason").focus();
  }

  document.addEventListener("submit", function (evt) {
    var form = evt.target;
    if (!form.classList || !form.classList.contains("job-action")) return;
    var box = dialog();
    if (!box || typeof box.showModal !== "function") return;  // post as is
    var submitter = evt.submitter;
    var action = submitter && submitter.name === "action" ? submitter.value : "";
    if (!LABELS[action]) return;
    evt.preventDefault();
    open(form, action);
  });

  // The ids go into the form only as it is sent, so no other input[name=job] sits in the
  // page while the dialog is open (the list's checkboxes are the only ones).
  document.addEventListener("submit", function (evt) {
    if (evt.target.id !== "confirm-form") return;
    var form = evt.target;
    var holder = document.getElementById("confirm-jobs");
    holder.textContent = "";
    // The list may have been filtered in place (htmx) since the page loaded: come back to
    // what is shown now, and refuse jobs of another cluster than the one shown now.
    var next = form.querySelector('input[name="next"]');
    if (next) next.value = location.pathname + location.search;
    var select = document.getElementById("id_cluster");
    var cluster = form.querySelector('input[name="cluster"]');
    if (select) {
      if (!cluster) {
        cluster = document.createElement("input");
        cluster.type = "hidden";
        cluster.name = "cluster";
        form.appendChild(cluster);
      }
      cluster.value = select.value;
    }
    pending.forEach(function (id) {
      var input = document.createElement("input");
      input.type = "hidden";
      input.name = "job";
      input.value = id;
      holder.appendChild(input);
    });
  });

  document.addEventListener("click", function (evt) {
    if (evt.target && evt.target.id === "confirm-cancel") dialog().close();
  });

  document.addEventListener("change", function (evt) {
    var target = evt.target;
    if (target.id === "select-all") {
      document.querySelectorAll('input[name="job"][form="bulk-form"]').forEach(function (box) {
        box.checked = target.checked;
      });
    }
    if (target.name === "job" || target.id === "select-all") {
      var status = document.getElementById("bulk-status");
      var count = document.querySelectorAll('input[name="job"][form="bulk-form"]:checked').length;
      if (status) status.textContent = count ? count + " selected" : "";
    }
  });

  // A push of the jobs topic brings, in #jobs-push, the rows of the jobs that moved lately:
  // each replaces the row of the same id where the list shows it (keeping its checkbox).
  document.addEventListener("htmx:wsAfterMessage", function () {
    var push = document.getElementById("jobs-push");
    var list = document.getElementById("jobs-rows");
    if (!push || !list) return;
    push.querySelectorAll("tr[id]").forEach(function (fresh) {
      var old = list.querySelector("#" + CSS.escape(fresh.id));
      if (!old) return;
      var oldBox = old.querySelector('input[name="job"]');
      var newBox = fresh.querySelector('input[name="job"]');
      if (oldBox && newBox) newBox.checked = oldBox.checked;
      // Pushed rows carry no form (it would have no CSRF token): keep the row's own.
      var oldActions = old.querySelector("td.c-actions");
      var newActions = fresh.querySelector("td.c-actions");
      if (oldActions && newActions) newActions.replaceWith(oldActions);
      old.replaceWith(fresh);
      formatTimes(fresh);
      if (window.htmx) window.htmx.process(fresh);
    });
    push.textContent = "";
    document.dispatchEvent(new CustomEvent("jobs:rowsUpdated"));
  });
})();
