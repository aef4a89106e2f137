// opscenter console: a task's log that tails live. Asks /tasks/<pk>/log/?cursor=<bytes> for
// what came after the cursor, appends it as text (never as HTML), and keeps the view at the
// bottom only while the viewer is there: scrolling up stops following, "Follow" resumes.
// When the task has ended (the log says so, or the pushed #task-state) the Cancel form, which
// is never pushed (it keeps the page's CSRF token), is hidden.
(function () {
  "use strict";
  function hideCancel() {
    var actions = document.getElementById("task-actions");
    if (!actions) return;
    actions.querySelectorAll("form").forEach(function (form) {
      form.hidden = true;
      form.querySelectorAll("button, textarea").forEach(function (el) { el.disabled = true; });
    });
  }
  document.addEventListener("htmx:wsAfterMessage", function () {
    var state = document.getElementById("task-state");
    if (state && state.dataset.ended === "true") hideCancel();
  });
  var POLL_MS = 1000;
  var MAX_CHARS = 2000000; // the page keeps at most this much of a live log
  var pre = document.getElementById("task-log");
  if (!pre || !pre.dataset.logUrl) return;
  var url = pre.dataset.logUrl;
  var cursor = parseInt(pre.dataset.cursor || "0", 10);
  var ended = pre.dataset.ended === "true";
  var following = true;
  var button = document.getElementById("log-follow");
  var status = document.getElementById("log-status");
  var kept = pre.textContent.length;

  function atBottom() {
    return pre.scrollHeight - pre.scrollTop - pre.clientHeight < 4;
  }
  function toBottom() { pre.scrollTop = pre.scrollHeight; }
  function showFollow() { if (button) button.hidden = following || ended; }

  function marker(text) {
    var span = document.createElement("span");
    span.className = "log-marker";
    span.textContent = text;
    return span;
  }

  function append(text, skipped) {
    if (skipped > 0) {
      pre.appendChild(marker("… " + (skipped / 1e6).toFixed(1) + " MB not shown (Download has it all) …"));
    }
    if (text) {
      pre.appendChild(document.createTextNode(text));
      kept += text.length;
      var empty = document.getElementById("log-empty");
      if (empty) empty.hidden = true;
    }
    // Drop the oldest text of a very long live log (the download has it all).
    while (kept > MAX_CHARS && pre.firstChild && pre.firstChild !== pre.lastChild) {
      kept -= (pre.firstChild.textContent || "").length;
      pre.removeChild(pre.firstChild);
    }
  }

  function poll() {
    if (ended) return;
    fetch(url + "?cursor=" + cursor, {headers: {"Accept": "application/json"}, credentials: "same-origin"})
      .then(function (r) { return r.json().then(function (body) { return {ok: r.ok, body: body}; }); })
      .then(function (res) {
        if (!res.ok) {
          if (status) status.textContent = res.body.error || "The log could not be read.";
          setTimeout(poll, POLL_MS * 5);
          return;
        }
        var body = res.body;
        var wasFollowing = following;
        append(body.text, body.skipped);
        cursor = body.cursor;
        if (wasFollowing) toBottom();
        if (body.ended) {
          ended = true;
          hideCancel();
          if (status) status.textContent = "The task has ended (" + body.state + ").";
          showFollow();
          return;
        }
        setTimeout(poll, body.text ? 250 : POLL_MS);
      })
      .catch(function () { setTimeout(poll, POLL_MS * 3); });
  }

  pre.addEventListener("scroll", function () {
    following = atBottom();
    showFollow();
    if (status && !ended) {
      status.textContent = following ? "Following the log as it grows." : "Not following: scroll to the bottom or press Follow.";
    }
  });
  if (button) {
    button.addEventListener("click", function () {
      following = true;
      toBottom();
      showFollow();
      if (status && !ended) status.textContent = "Following the log as it grows.";
    });
  }
  toBottom();
  if (!ended) setTimeout(poll, POLL_MS);
})();
