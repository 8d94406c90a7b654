// Progressive enhancement only: every page works without this file.

// Keep a region current without reloading the page: fetch its fragment every few seconds and
// swap it in when its version changed. The fragment says when there is nothing left to wait
// for. Without JavaScript the page offers a refresh link instead.
const versionOf = (root) => root.querySelector("[data-live-version]")?.dataset.liveVersion;
const finished = (root) => root.querySelector("[data-live-continue='no']") !== null;

for (const region of document.querySelectorAll("[data-live-src]")) {
  const every = Number(region.dataset.liveEvery || 2000);
  const announce = document.getElementById(region.dataset.liveAnnounce || "");
  const refresh = async () => {
    try {
      const response = await fetch(region.dataset.liveSrc, { credentials: "same-origin" });
      if (response.redirected) { window.location.assign(response.url); return; }
      if (response.ok) {
        const next = document.createElement("div");
        next.innerHTML = await response.text();
        if (versionOf(next) !== versionOf(region)) {
          region.replaceChildren(...next.childNodes);
          if (announce) announce.textContent = "Referral statuses updated.";
        }
        if (finished(region)) return;
      }
    } catch (error) {
      // The service is briefly unreachable: try again at the next tick.
    }
    setTimeout(refresh, every);
  };
  if (!finished(region)) setTimeout(refresh, every);
}

// Show the BARC-10 total as the ratings are chosen.
for (const group of document.querySelectorAll("[data-barc10]")) {
  const output = group.querySelector("output");
  const update = () => {
    const ratings = [...group.querySelectorAll("select")].map((s) => Number(s.value));
    output.value = ratings.every((r) => r > 0)
      ? `${ratings.reduce((a, b) => a + b, 0)} of 60`
      : "rate all ten to see the total";
  };
  group.addEventListener("change", update);
}

// An error summary link moves the keyboard focus to its field, not just the view.
for (const link of document.querySelectorAll(".error-summary a[href^='#']")) {
  link.addEventListener("click", (event) => {
    const target = document.getElementById(link.hash.slice(1));
    if (target) {
      event.preventDefault();
      target.scrollIntoView({ block: "center" });
      target.focus();
    }
  });
}
document.getElementById("error-summary")?.focus();
