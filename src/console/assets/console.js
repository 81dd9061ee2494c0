// The live parts of the console's pages. Every page is complete without this file; with it,
// an element marked data-live="URL" is replaced by each fragment the server sends on that
// Server-Sent Events stream, until the server says the execution ended. Fragments are HTML
// the server rendered and escaped; nothing here builds markup from data.
"use strict";

document.addEventListener("DOMContentLoaded", () => {
  for (const live of document.querySelectorAll("[data-live]")) {
    const source = new EventSource(live.dataset.live);
    const state = document.getElementById("live-state");
    const say = (text) => { if (state) state.textContent = text; };
    source.addEventListener("open", () => say("live"));
    source.addEventListener("snapshot", (event) => {
      live.innerHTML = event.data;
      say("live");
    });
    source.addEventListener("end", () => {
      source.close();
      say("ended");
    });
    source.addEventListener("refused", (event) => {
      source.close();
      say("stopped updating: " + event.data);
    });
    source.addEventListener("error", () => {
      if (source.readyState !== EventSource.CLOSED) say("reconnecting…");
    });
  }
  // A form's button is disabled once pressed, so a double click sends one request (a second
  // one would replay the same client token anyway).
  for (const form of document.querySelectorAll("form[method=post]")) {
    form.addEventListener("submit", () => {
      for (const button of form.querySelectorAll("button")) button.disabled = true;
    });
  }
});
