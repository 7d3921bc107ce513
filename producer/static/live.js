// A live page (a run's, a workflow's): follow its Server-Sent Events and redraw the page's
// content as each event arrives (the server renders it; nothing is built here). The page
// names its stream (data-events) and, unless it is a run's, the event types to follow
// (data-types) and those that end it (data-ends). Served from /ui/static.
"use strict";
(function () {
  const main = document.querySelector("main[data-events]");
  if (!main || typeof EventSource === "undefined") return;
  const TYPES = main.dataset.types ? main.dataset.types.split(" ") : ["submitted",
    "attempt_started", "output", "output_invalid", "check_failed", "vote", "vote_skipped",
    "issue_decided", "validation_passed", "validation_failed", "retry_scheduled", "succeeded",
    "failed", "cancelled"];
  const ENDS = new Set(main.dataset.ends ? main.dataset.ends.split(" ")
    : ["succeeded", "failed", "cancelled"]);
  const source = new EventSource(main.dataset.events);
  let timer = null;
  let ended = false;

  async function redraw() {
    timer = null;
    const answer = await fetch(window.location.href, { credentials: "same-origin" });
    if (!answer.ok) return;
    const page = new DOMParser().parseFromString(await answer.text(), "text/html");
    const fresh = page.querySelector("main");
    if (fresh) main.replaceChildren(...fresh.childNodes);
    if (ended) main.dataset.live = "ended";
  }

  for (const type of TYPES) {
    source.addEventListener(type, function () {
      if (ENDS.has(type)) {
        ended = true;
        source.close();
      }
      if (timer === null) timer = setTimeout(redraw, ended ? 0 : 250);
    });
  }
})();
