// Live progress in the document list: poll each unfinished document until it is ready or failed.
(function () {
  "use strict";
  const POLL_MS = 1500;
  const labels = { pending: "Pending", processing: "Processing", ready: "Ready", failed: "Failed" };

  function update(row, doc) {
    const bar = row.querySelector("progress");
    const text = row.querySelector(".doc-progress span");
    if (bar) bar.value = Math.round(doc.progress * 100);
    if (text) text.textContent = doc.chunks_done + " / " + (doc.chunks_total || "?") + " chunks";
    const badge = row.closest("tr") && row.closest("tr").querySelector(".doc-status");
    if (badge) {
      badge.className = "doc-status doc-status-" + doc.status;
      badge.textContent = labels[doc.status] + (doc.error ? ": " + doc.error : "");
      badge.title = doc.error || "";
    }
  }

  function poll(row) {
    const id = row.dataset.document;
    fetch("/api/documents/" + id + "/", { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (doc) {
        if (!doc) return;
        update(row, doc);
        if (doc.status !== "ready" && doc.status !== "failed") setTimeout(function () { poll(row); }, POLL_MS);
      })
      .catch(function () { setTimeout(function () { poll(row); }, POLL_MS * 4); });
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll('.doc-progress[data-finished="0"]').forEach(poll);
  });
})();
