// Live backfill progress on the admin dashboard. The page works without this script; it
// only saves reloading: every second it reads /admin/status.json (same session cookie) and
// updates the progress bar, rows, rate and ETA, the workers with one bar per range left,
// and the next step's gates (which follow the backfill and the instances), built the way
// the page renders them. A phase change reloads
// the page, since the buttons depend on it, and so does a backfill stopping short or
// resuming (the resume offer).
(function () {
  "use strict";
  var bar = document.getElementById("backfill-progress");
  var phase = document.getElementById("phase");
  if (!bar || !phase) { return; }
  var text = function (id, value) {
    var el = document.getElementById(id);
    if (el) { el.textContent = value; }
  };
  var eta = function (b) {
    var left = Math.max(0, b.rows_total - b.rows_done);
    if (b.state !== "running" || !(b.rows_per_s > 0)) { return "—"; }
    var secs = Math.round(left / b.rows_per_s);
    return Math.floor(secs / 60) + "m " + String(secs % 60).padStart(2, "0") + "s";
  };
  // One gate as the page renders it (the server decides its mark and words): mark, name,
  // what a screen reader says of the mark, detail.
  var gateItem = function (gate) {
    var li = document.createElement("li");
    li.className = gate.class;
    var mark = document.createElement("span");
    mark.className = "gate-mark";
    mark.setAttribute("aria-hidden", "true");
    mark.textContent = gate.symbol;
    var name = document.createElement("strong");
    name.textContent = gate.name;
    var said = document.createElement("span");
    said.className = "visually-hidden";
    said.textContent = gate.said + ":";
    li.append(mark, " ", name, " ", said, " " + gate.detail);
    return li;
  };
  var showGates = function (gates) {
    var list = document.getElementById("next-gates");
    if (!list || !gates) { return; }
    var items = gates.map(gateItem);
    if (items.length === 0) {
      var none = gateItem({ class: "met", symbol: "✓", said: "met", name: "", detail: "" });
      none.replaceChildren(none.firstChild, " no gate");
      items = [none];
    }
    list.replaceChildren.apply(list, items);
  };
  // The bars of the ranges left, as the page renders them: the ranges with a worker first.
  var showRanges = function (ranges) {
    var list = document.getElementById("worker-bars");
    if (!list || !ranges) { return; }
    var open = ranges.filter(function (r) { return r.last_id < r.end_id; });
    open.sort(function (a, b) {
      var wa = a.worker === null ? Infinity : a.worker;
      var wb = b.worker === null ? Infinity : b.worker;
      return wa !== wb ? wa - wb : a.start_id - b.start_id;
    });
    var items = open.map(function (r) {
      var span = Math.max(1, r.end_id - r.start_id);
      var pct = Math.min(100, Math.max(0, ((r.last_id - r.start_id) * 100) / span));
      var label = r.worker === null ? "waiting" : "worker " + r.worker;
      var li = document.createElement("li");
      var name = document.createElement("span");
      name.className = "worker-label";
      name.textContent = label;
      var bar = document.createElement("progress");
      bar.max = 100;
      bar.value = pct;
      bar.textContent = pct.toFixed(0) + " %";
      bar.setAttribute("aria-label", label + ": ids " + (r.start_id + 1) + " to " + r.end_id);
      var range = document.createElement("span");
      range.className = "worker-range";
      range.textContent = "ids " + (r.start_id + 1) + "–" + r.end_id + ", at " + r.last_id +
        " (" + pct.toFixed(0) + " %) · " + r.batch_size + " rows per batch";
      li.append(name, " ", bar, " ", range);
      return li;
    });
    list.replaceChildren.apply(list, items);
  };
  var tick = function () {
    fetch("/admin/status.json", { credentials: "same-origin", cache: "no-store" })
      .then(function (r) { return r.ok ? r.json() : Promise.reject(r.status); })
      .then(function (s) {
        var b = s.backfill;
        // The phase, and whether the backfill stopped short (the page then offers a resume),
        // decide which controls the page shows: a change of either reloads it.
        var stopped = b.state === "interrupted" || b.state === "failed";
        var shown = document.getElementById("backfill-state");
        if (s.phase !== phase.dataset.phase ||
            (shown && String(stopped) !== shown.dataset.stopped)) {
          window.location.reload();
          return;
        }
        var pct = b.rows_total > 0 ? Math.min(100, (b.rows_done * 100) / b.rows_total) : (b.state === "done" ? 100 : 0);
        bar.value = pct;
        bar.textContent = pct.toFixed(0) + " %";
        text("backfill-percent", pct.toFixed(1) + " %");
        text("backfill-rows", b.rows_done + " / " + b.rows_total);
        text("backfill-rate", Math.round(b.rows_per_s).toString());
        text("backfill-eta", eta(b));
        text("backfill-batch", b.batch_size.toString());
        text("backfill-state", b.state + " (" + b.direction + ")");
        text("backfill-workers", b.workers.toString());
        text("backfill-workers-setting", String(b.workers_setting));
        text("backfill-workers-reason", b.workers_reason || "none");
        text("backfill-workers-rule", b.workers_rule || "not recorded yet");
        text("backfill-triggers", b.triggers || "not chosen");
        showRanges(b.ranges);
        showGates(s.next_gates);
      })
      .catch(function () { /* keep the last figures; the next tick tries again */ });
  };
  window.setInterval(tick, 1000);
}());
