// Live preview of a schedule's next fire times while its definition is edited.
//
// The admin renders a .schedule-preview box under each schedule form (the schedule page and
// each schedule of a job's page) with the saved definition's preview. When an input of the
// definition changes, we ask the server for the preview of what is typed, so the browser never
// does scheduling maths of its own, and show it in the box's live part.
"use strict";
{
    const FIELDS = ["kind", "cron", "timezone", "interval_seconds", "run_at", "start_at", "end_at"];
    const NAME_RE = new RegExp("^(.*?)(" + FIELDS.join("|") + ")(_0|_1)?$");
    const DELAY_MS = 400;
    const timers = new Map();
    const sequence = new WeakMap();

    // Inline forms: the enclosing row's id is the form prefix ("schedules-0"); else "".
    function prefixOf(box) {
        const row = box.closest(".inline-related[id], tr.form-row[id]");
        return row ? row.id + "-" : "";
    }

    function boxFor(prefix) {
        for (const box of document.querySelectorAll(".schedule-preview")) {
            if (prefixOf(box) === prefix) {
                return box;
            }
        }
        return null;
    }

    function value(form, name) {
        const input = form.elements.namedItem(name);
        return input && "value" in input ? input.value.trim() : "";
    }

    // The admin splits a date-time into a date input (_0) and a time input (_1).
    function dateTime(form, name) {
        const date = value(form, name + "_0");
        const time = value(form, name + "_1");
        return date ? (time ? date + " " + time : date) : value(form, name);
    }

    async function refresh(box) {
        const prefix = prefixOf(box);
        const form = box.closest("form");
        // The template row of "add another", or a page where the definition is read-only.
        if (prefix.endsWith("-empty-") || !form || !form.elements.namedItem(prefix + "kind")) {
            return;
        }
        const params = new URLSearchParams();
        for (const name of ["kind", "cron", "timezone", "interval_seconds"]) {
            params.set(name, value(form, prefix + name));
        }
        for (const name of ["run_at", "start_at", "end_at"]) {
            params.set(name, dateTime(form, prefix + name));
        }
        const live = box.querySelector(".schedule-preview-live");
        const mine = (sequence.get(box) || 0) + 1;
        sequence.set(box, mine);
        let html;
        try {
            const response = await fetch(box.dataset.url + "?" + params.toString(), {
                credentials: "same-origin",
                headers: {"X-Requested-With": "XMLHttpRequest"},
            });
            html = response.ok ? await response.text() : null;
            if (!response.ok) {
                live.textContent = "Preview unavailable (" + response.status + ").";
            }
        } catch (error) {
            live.textContent = "Preview unavailable: " + error;
        }
        // Only the answer to the latest request counts; an older one may arrive last.
        if (html !== null && html !== undefined && sequence.get(box) === mine) {
            // The server escapes everything it puts in the fragment.
            live.innerHTML = "<p><strong>As edited, not saved yet:</strong></p>" + html;
        }
    }

    function later(box) {
        clearTimeout(timers.get(box));
        timers.set(box, setTimeout(() => refresh(box), DELAY_MS));
    }

    function onEdit(event) {
        const match = NAME_RE.exec(event.target.name || "");
        const box = match && boxFor(match[1]);
        if (box) {
            later(box);
        }
    }

    document.addEventListener("input", onEdit);
    document.addEventListener("change", onEdit);
    // The admin's calendar and clock pickers set the inputs without an input event.
    document.addEventListener("click", (event) => {
        if (event.target.closest(".datetimeshortcuts, .calendarbox, .clockbox")) {
            document.querySelectorAll(".schedule-preview").forEach(later);
        }
    });
    document.addEventListener("DOMContentLoaded", () => {
        // A form sent back with errors shows values that differ from the saved ones.
        if (document.querySelector(".errornote")) {
            document.querySelectorAll(".schedule-preview").forEach(refresh);
        }
    });
}
