// flagrail console: the "/" hotkey for search and the live "applied in n of m" line.
// Pages work without this script; it only adds the keyboard shortcut and live updates.
"use strict";

document.addEventListener("keydown", (event) => {
  if (event.key !== "/" || event.ctrlKey || event.metaKey || event.altKey) return;
  const target = event.target;
  if (target instanceof HTMLElement && target.closest("input, textarea, select")) return;
  const search = document.querySelector("[data-hotkey='/']");
  if (search) {
    event.preventDefault();
    search.focus();
    search.select();
  }
});

// After a kill, poll the SDK instance reports until every live process applied it.
function watchApplied(line) {
  const url = line.dataset.url;
  const text = line.querySelector("[data-applied-text]");
  const lagging = line.querySelector("[data-lagging]");
  let stopped = false;
  async function poll() {
    if (stopped) return;
    try {
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.ok) {
        const body = await response.json();
        text.textContent = `applied in ${body.applied} of ${body.live} processes`;
        lagging.textContent = body.lagging.length
          ? "; lagging: " + body.lagging.map((i) => `${i.name} (v${i.applied_version}${i.token_name ? ", token " + i.token_name : ""})`).join(", ")
          : "";
        line.classList.toggle("done", body.live > 0 && body.applied === body.live);
      } else if (response.status === 401 || response.status === 403) {
        stopped = true;
        return;
      }
    } catch (_error) {
      // a network blip: try again on the next tick
    }
    setTimeout(poll, 500);
  }
  poll();
  setTimeout(() => { stopped = true; }, 10 * 60 * 1000);
}

document.querySelectorAll("[data-applied]").forEach(watchApplied);
