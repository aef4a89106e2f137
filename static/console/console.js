// opscenter console: times in the viewer's zone, ages that tick on the database's clock,
// and the banner that greys live values when the live socket has been silent for 10 s.
(function () {
  "use strict";
  var SILENT_MS = 10000;
  var zone = document.body.dataset.zone || "UTC";
  var lastMessage = Date.now();
  var formatter;
  try {
    formatter = new Intl.DateTimeFormat("sv-SE", {timeZone: zone, year: "numeric", month: "2-digit",
      day: "2-digit", hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false});
  } catch (e) {
    formatter = null;
  }

  function formatTimes(root) {
    if (!formatter) return;
    root.querySelectorAll("time[datetime]:not([data-fixed])").forEach(function (el) {
      var when = new Date(el.getAttribute("datetime"));
      if (!isNaN(when)) el.textContent = formatter.format(when);
    });
  }
  // For the pages' own scripts (e.g. rows moved in by hand in jobs.js).
  window.opscenter = window.opscenter || {};
  window.opscenter.formatTimes = formatTimes;

  // An element with data-age-since (ISO time on the DB clock) and data-db-now (the DB's now
  // when rendered) shows an age that ticks; data-late / data-dead (seconds) colour it.
  function tickAges() {
    var now = Date.now();
    document.querySelectorAll("[data-age-since]").forEach(function (el) {
      if (!el._received) el._received = now;
      var since = Date.parse(el.dataset.ageSince), dbNow = Date.parse(el.dataset.dbNow);
      if (isNaN(since) || isNaN(dbNow)) return;
      var age = (dbNow - since + (now - el._received)) / 1000;
      if (age < 0) age = 0;
      el.textContent = age < 100 ? age.toFixed(1) + " s" : Math.round(age) + " s";
      var late = parseFloat(el.dataset.late), dead = parseFloat(el.dataset.dead);
      el.classList.toggle("age-dead", !isNaN(dead) && age >= dead);
      el.classList.toggle("age-late", !isNaN(late) && age >= late && !(age >= dead));
      el.classList.toggle("age-ok", !(age >= late) && !(age >= dead));
    });
  }

  // A table wider than the screen scrolls inside its .table-wrap: keyboard users must be
  // able to reach it (focusable) and hear what it is (a region named by the table's caption).
  function labelScrollers(root) {
    (root.querySelectorAll ? root : document).querySelectorAll(".table-wrap").forEach(function (el) {
      if (el.scrollWidth > el.clientWidth + 1) {
        var caption = el.querySelector("caption");
        el.setAttribute("tabindex", "0");
        el.setAttribute("role", "region");
        el.setAttribute("aria-label", caption ? caption.textContent.trim() : "Scrollable table");
      }
    });
  }

  function checkSilence() {
    var silent = document.querySelector("[ws-connect]") && Date.now() - lastMessage > SILENT_MS;
    document.body.classList.toggle("stale", !!silent);
    var banner = document.getElementById("live-banner");
    if (banner) banner.hidden = !silent;
  }

  document.addEventListener("htmx:wsAfterMessage", function () { lastMessage = Date.now(); });
  document.addEventListener("htmx:wsOpen", function () { lastMessage = Date.now(); });
  document.addEventListener("htmx:afterSettle", function (evt) {
    formatTimes(evt.target); labelScrollers(evt.target.parentNode || document);
  });
  document.addEventListener("htmx:oobAfterSwap", function (evt) {
    formatTimes(evt.target); labelScrollers(evt.target.parentNode || document);
  });
  document.addEventListener("DOMContentLoaded", function () {
    formatTimes(document); tickAges(); labelScrollers(document);
  });
  window.addEventListener("resize", function () { labelScrollers(document); });
  setInterval(tickAges, 200);
  setInterval(checkSilence, 1000);
})();
