// berth dashboard: streams a running build's log into <pre id="log" data-live=URL>.
// The only script of the dashboard; every page works without it. Text is appended with
// textContent (never parsed as HTML), and only the last LIMIT characters are kept.
(function () {
  "use strict";
  var LIMIT = 256 * 1024;
  var pre = document.getElementById("log");
  var status = document.getElementById("log-status");
  if (!pre || !pre.dataset.live || !window.fetch || !window.TextDecoder) return;
  function say(text) { if (status) status.textContent = text; }
  var tries = 0;
  function follow() {
    fetch(pre.dataset.live, { credentials: "same-origin", cache: "no-store" }).then(function (response) {
      // A queued build has no log yet: look again every 2 s, for 10 minutes at most.
      if (response.status === 404 && tries < 300) { tries += 1; say("Queued: waiting for the build to start."); setTimeout(follow, 2000); return; }
      if (!response.ok || !response.body) { say("The log is not available (" + response.status + "): reload the page."); return; }
      var reader = response.body.getReader();
      var decoder = new TextDecoder();
      say("Running: the log follows below.");
      function pump() {
        return reader.read().then(function (chunk) {
          if (chunk.done) {
            say("The build has ended: reload the page for its result.");
            pre.dataset.ended = "1";
            return;
          }
          var text = pre.textContent + decoder.decode(chunk.value, { stream: true });
          if (text.length > LIMIT) text = text.slice(text.length - LIMIT);
          var atBottom = pre.scrollTop + pre.clientHeight >= pre.scrollHeight - 4;
          pre.textContent = text;
          if (atBottom) pre.scrollTop = pre.scrollHeight;
          return pump();
        });
      }
      return pump();
    }).catch(function () { say("The log stream broke off: reload the page."); });
  }
  follow();
})();
