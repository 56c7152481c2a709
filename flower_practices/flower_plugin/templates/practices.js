/* The Practices page: render /api/practices, refresh it every few seconds (paused while the
 * tab is hidden), filter, group and sort. Every string from the wire goes through
 * textContent or an attribute setter, never as markup. */
(function () {
  "use strict";
  var config = JSON.parse(document.getElementById("fp-config").textContent);
  var SEVERITY_ORDER = {critical: 0, warning: 1, info: 2};
  var BADGE = {critical: "danger", warning: "warning", info: "info"};
  var OPEN_LIMIT = 10;  // groups with more findings start collapsed
  var MAX_LIST = 10;    // list items shown in evidence before "and N more"
  var data = null, opened = {}, timer = null, lastOk = 0;
  var $ = function (id) { return document.getElementById(id); };

  function el(tag, attrs, text) {
    var node = document.createElement(tag);
    if (attrs) for (var k in attrs) if (attrs[k] !== undefined && attrs[k] !== null) node.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }
  function link(href, text, title) { return el("a", {href: href, title: title}, text); }
  function pad(n) { return (n < 10 ? "0" : "") + n; }
  function clock(ts) { var d = new Date(ts * 1000); return pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds()); }
  function absolute(ts) {
    var d = new Date(ts * 1000);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " + clock(ts);
  }
  function duration(seconds) {
    seconds = Math.abs(Number(seconds));
    if (!isFinite(seconds)) return String(seconds);
    if (seconds < 1) return Math.round(seconds * 1000) + " ms";
    if (seconds < 90) return (seconds < 10 ? seconds.toFixed(1).replace(/\.0$/, "") : Math.round(seconds)) + " s";
    if (seconds < 5400) return Math.round(seconds / 60) + " min";
    if (seconds < 172800) return (seconds / 3600).toFixed(1).replace(/\.0$/, "") + " h";
    return Math.round(seconds / 86400) + " days";
  }
  function ago(ts) { return duration(Date.now() / 1000 - ts) + " ago"; }
  function count(n) { return Number(n || 0).toLocaleString("en-US"); }
  function plural(n, word) { return count(n) + " " + word + (Number(n) === 1 ? "" : "s"); }

  // -- evidence for humans: formatting keyed by key name / suffix ------------------------
  var NOUNS = ["tasks", "failures", "retries", "workers", "messages", "results", "samples", "events", "queues"];
  var LAST = /^(min_|max_)|(^|_)(window|grace|tolerance|warmup)_seconds$|^(sample_every|percentile|source|transport|ignore_|extra_)/;
  var FIRST = /(_share|_ratio)$|^(oldest|longest)_|^(lost_tasks|failures_without_retry|unread_results|exception_classes|reasons)$/;
  function rank(key) { return FIRST.test(key) ? 0 : LAST.test(key) ? 2 : 1; }
  function singular(word) { return word === "retries" ? "retry" : word.replace(/s$/, ""); }
  function formatValue(key, value) {
    if (value === null || value === undefined) return "unknown";
    if (typeof value === "boolean") return value ? "yes" : "no";
    if (typeof value === "number") {
      if (/(_share|_ratio|^share|^ratio)$/.test(key)) return (value * 100).toFixed(value * 100 % 1 ? 1 : 0) + " %";
      if (/_seconds$/.test(key)) return duration(value);
      var noun = NOUNS.filter(function (n) { return key === n || key.slice(-n.length - 1) === "_" + n; })[0];
      var text = Number.isInteger(value) ? count(value) : String(Math.round(value * 1000) / 1000);
      if (noun) return text + " " + (value === 1 ? singular(noun) : noun);
      return text;
    }
    if (Array.isArray(value)) {
      if (!value.length) return "none";
      var items = value.slice(0, MAX_LIST).map(function (v) { return formatValue("", v); });
      if (value.length > MAX_LIST) items.push("and " + (value.length - MAX_LIST) + " more");
      return items.join(", ");
    }
    if (typeof value === "object") {
      // {"ConnectionError": 3} reads "ConnectionError × 3"; {"max_retries": 3} "max retries 3"
      var parts = Object.keys(value).map(function (k) {
        return /^[a-z_]+$/.test(k) ? label(k) + " " + formatValue(k, value[k])
          : k + (typeof value[k] === "number" ? " \u00d7 " : " ") + formatValue(k, value[k]);
      });
      return parts.length ? parts.join(", ") : "none";
    }
    return String(value);
  }
  function label(key) {  // the unit moves into the value: "unread_share" reads "unread 97 %"
    var noun = NOUNS.filter(function (n) { return key.slice(-n.length - 1) === "_" + n; })[0];
    var base = noun ? key.slice(0, -noun.length - 1) : key.replace(/_(seconds|share|ratio)$/, "");
    return base.replace(/_/g, " ");
  }
  function evidence(ev) {
    var box = el("p", {"class": "evidence"});
    Object.keys(ev || {}).sort(function (a, b) { return rank(a) - rank(b) || (a < b ? -1 : 1); }).forEach(function (key) {
      var item = el("span", {"class": "evidence-item", "data-key": key});
      item.appendChild(el("span", {"class": "evidence-key"}, label(key)));
      if (key === "task_ids" && Array.isArray(ev[key])) {
        ev[key].slice(0, MAX_LIST).forEach(function (id) {
          item.appendChild(document.createTextNode(" "));
          item.appendChild(link(config.links.task + encodeURIComponent(id), String(id).slice(0, 8), "task " + id + " in Flower"));
        });
      } else {
        item.appendChild(document.createTextNode(" " + formatValue(key, ev[key])));
      }
      box.appendChild(item);
    });
    return box;
  }

  // -- cells -----------------------------------------------------------------------------
  function cell(value, href, title) {
    var td = el("td");
    if (value === null || value === undefined || value === "") { td.textContent = "\u2014"; return td; }
    td.appendChild(href ? link(href, value, title) : document.createTextNode(value));
    return td;
  }
  function timeCell(ts) {
    var td = el("td", {"class": "fp-time"});
    if (!ts) { td.textContent = "\u2014"; return td; }
    td.appendChild(el("time", {datetime: new Date(ts * 1000).toISOString(), title: ago(ts)}, absolute(ts)));
    return td;
  }
  function runbookHref(f) {
    var q = ["queue", "task", "worker"].filter(function (k) { return f[k]; })
      .map(function (k) { return k + "=" + encodeURIComponent(f[k]); }).join("&");
    return config.links.runbook + f.practice + (q ? "?" + q : "");
  }
  function row(f) {
    var tr = el("tr", {"class": "fp-row", "data-practice": f.practice, "data-severity": f.severity});
    var td = el("td");
    td.appendChild(document.createTextNode(f.summary));
    if (f.evidence && Object.keys(f.evidence).length) td.appendChild(evidence(f.evidence));
    tr.appendChild(td);
    tr.appendChild(cell(f.queue, f.queue ? config.links.broker : null, "queues on Flower's Broker page"));
    tr.appendChild(cell(f.task, f.task ? config.links.tasks + "?name=" + encodeURIComponent(f.task) : null, "this task's runs in Flower"));
    tr.appendChild(cell(f.worker, f.worker ? config.links.worker + encodeURIComponent(f.worker) : null, "this worker in Flower"));
    tr.appendChild(el("td", {"class": "text-end"}, count(f.count)));
    tr.appendChild(timeCell(f.first_seen));
    tr.appendChild(timeCell(f.last_seen));
    var rb = el("td");
    if (config.runbooks.indexOf(f.practice) >= 0) rb.appendChild(link(runbookHref(f), "runbook"));
    else rb.textContent = "\u2014";
    tr.appendChild(rb);
    return tr;
  }
  function table(rows) {
    var fig = el("figure", {"class": "table-responsive mb-0"});
    var t = el("table", {"class": "broker-table table table-hover align-middle mb-0 practices-findings"});
    var head = el("tr");
    ["Finding", "Queue", "Task", "Worker", "Count", "First seen", "Last seen", "Runbook"].forEach(function (h) { head.appendChild(el("th", null, h)); });
    t.appendChild(el("thead")).appendChild(head);
    var body = el("tbody");
    rows.forEach(function (f) { body.appendChild(row(f)); });
    t.appendChild(body);
    fig.appendChild(t);
    return fig;
  }

  // -- filtering, grouping, sorting --------------------------------------------------------
  function matcher() {
    var words = $("fp-filter").value.toLowerCase().split(/\s+/).filter(Boolean);
    var sev = {};
    Array.prototype.forEach.call(document.querySelectorAll("#fp-severities input"), function (c) { sev[c.value] = c.checked; });
    return function (f) {
      if (sev[f.severity] === false) return false;
      if (!words.length) return true;
      var hay = [f.practice, f.queue, f.task, f.worker, f.summary].join(" ").toLowerCase();
      return words.every(function (w) { return hay.indexOf(w) >= 0; });
    };
  }
  var SORTS = {
    severity: function (a, b) { return (SEVERITY_ORDER[a.severity] - SEVERITY_ORDER[b.severity]) || (b.count - a.count); },
    first_seen: function (a, b) { return b.first_seen - a.first_seen; },
    last_seen: function (a, b) { return b.last_seen - a.last_seen; },
    count: function (a, b) { return b.count - a.count; }
  };
  function unit(rows) {
    var kinds = ["task", "queue", "worker"];
    for (var i = 0; i < kinds.length; i++) {
      var k = kinds[i], seen = {};
      rows.forEach(function (f) { if (f[k]) seen[f[k]] = 1; });
      if (Object.keys(seen).length > 1 || (rows.length === 1 && rows[0][k])) return k;
    }
    return "finding";
  }

  function renderGroups() {
    var practices = {};
    data.practices.forEach(function (p) { practices[p.id] = p; });
    var match = matcher(), sort = SORTS[$("fp-sort").value] || SORTS.severity;
    var shown = data.findings.filter(match).sort(sort);
    var groups = [], byId = {};
    shown.forEach(function (f) {
      var g = byId[f.practice];
      if (!g) { g = byId[f.practice] = {id: f.practice, rows: [], severity: f.severity, count: 0}; groups.push(g); }
      g.rows.push(f);
      g.count += f.count;
      if (SEVERITY_ORDER[f.severity] < SEVERITY_ORDER[g.severity]) g.severity = f.severity;
    });
    if ($("fp-sort").value === "severity") groups.sort(function (a, b) { return SEVERITY_ORDER[a.severity] - SEVERITY_ORDER[b.severity]; });
    var filtering = $("fp-filter").value.trim() !== "";
    var box = document.createDocumentFragment();
    groups.forEach(function (g) {
      var p = practices[g.id] || {title: g.id};
      // a filter opens what it matched; otherwise the reader's choice, else small groups open
      var open = filtering || (g.id in opened ? opened[g.id] : g.rows.length <= OPEN_LIMIT);
      var det = el("details", {"class": "broker-table-card fp-group", "data-practice": g.id, "data-severity": g.severity});
      if (open) det.open = true;
      var sum = el("summary");
      sum.appendChild(el("span", {"class": "badge text-bg-" + (BADGE[g.severity] || "secondary")}, g.severity));
      sum.appendChild(el("span", {"class": "fp-title"}, p.title));
      sum.appendChild(el("code", null, g.id));
      var u = unit(g.rows);
      sum.appendChild(el("span", {"class": "fp-size"}, "\u00d7 " + plural(g.rows.length, u) + " \u00b7 " + plural(g.count, "occurrence")));
      det.appendChild(sum);
      var fill = function () { if (!det.dataset.filled) { det.dataset.filled = "1"; det.appendChild(table(g.rows)); } };
      if (open) fill();
      det.addEventListener("toggle", function () {
        if (!filtering) opened[g.id] = det.open;
        if (det.open) fill();
      });
      box.appendChild(det);
    });
    var target = $("fp-groups");
    target.textContent = "";
    if (!groups.length) {
      target.appendChild(el("section", {"class": "broker-table-card"})).appendChild(el("p", {"class": "empty-table-message m-0 p-4"},
        data.findings.length ? "No finding matches the filter." : "No active findings: nothing observed so far breaks a best practice."));
    }
    target.appendChild(box);
    $("fp-shown").textContent = shown.length === data.findings.length ? "" : plural(shown.length, "finding") + " of " + count(data.findings.length) + " shown";
  }

  function renderStatus(fetchedAt) {
    var s = data.stream || {};
    var n = data.findings.length;
    $("fp-total").textContent = plural(n, "active finding");
    var badge = $("fp-stream");
    badge.className = "badge " + (s.connected ? "text-bg-success" : "text-bg-danger");
    badge.textContent = s.connected ? "connected" : "not connected";
    badge.title = s.reason || "";
    $("fp-events").textContent = plural(s.events || 0, "event") + " seen" + (s.last_event_at ? ", last " + ago(s.last_event_at) : "");
    var updated = $("fp-updated");
    updated.textContent = "updated " + clock(fetchedAt);
    updated.title = absolute(fetchedAt);
    var stale = $("fp-stale");
    if (s.connected === false) {
      var since = s.disconnected_since ? absolute(s.disconnected_since) + " (" + ago(s.disconnected_since) + ")" : "start-up";
      stale.textContent = "Stale \u2014 event stream disconnected since " + since + ": " + (s.reason || "unknown") +
        ". The findings below are as of the last event received and may no longer hold.";
      stale.hidden = false;
    } else {
      stale.hidden = true;
    }
    var counts = {critical: 0, warning: 0, info: 0};
    data.findings.forEach(function (f) { counts[f.severity] = (counts[f.severity] || 0) + 1; });
    Object.keys(counts).forEach(function (k) {
      var lbl = document.querySelector("label[for=fp-sev-" + k + "] span");
      if (lbl) lbl.textContent = count(counts[k]);
    });
  }

  function renderCoverage() {
    var practices = {};
    data.practices.forEach(function (p) { practices[p.id] = p; });
    var body = $("fp-coverage"), active = 0, other = 0;
    body.textContent = "";
    Object.keys(data.coverage).forEach(function (id) {
      var p = practices[id] || {title: id}, cov = String(data.coverage[id]);
      if (cov === "active") active++; else other++;
      var tr = el("tr");
      var td = el("td");
      td.appendChild(el("strong", null, p.title));
      td.appendChild(document.createTextNode(" "));
      td.appendChild(el("code", null, id));
      tr.appendChild(td);
      tr.appendChild(el("td")).appendChild(el("span", {"class": "badge text-bg-" + (BADGE[p.severity] || "secondary")}, p.severity || ""));
      tr.appendChild(el("td", {"class": cov === "active" ? "coverage-active" : "coverage-unsupported"}, cov));
      var rb = el("td");
      if (config.runbooks.indexOf(id) >= 0) rb.appendChild(link(config.links.runbook + id, "runbook")); else rb.textContent = "\u2014";
      tr.appendChild(rb);
      body.appendChild(tr);
    });
    $("fp-coverage-summary").textContent = "\u00b7 " + active + " active, " + other + " not checked here";
  }

  function render(fetchedAt) {
    if (window.performance && performance.mark) performance.mark("fp-render-start");
    renderStatus(fetchedAt);
    renderGroups();
    renderCoverage();
    if (window.performance && performance.measure) {
      performance.mark("fp-render-end");
      performance.measure("fp-render", "fp-render-start", "fp-render-end");
    }
    document.body.setAttribute("data-fp-rendered", String(fetchedAt));
  }

  function refresh() {
    timer = null;
    if (document.visibilityState === "hidden") return;  // resumed by visibilitychange
    fetch(config.api, {credentials: "same-origin", headers: {"Accept": "application/json"}, cache: "no-store"})
      .then(function (resp) {
        if (!resp.ok) throw new Error("HTTP " + resp.status + (resp.status === 401 || resp.status === 403 ? " (log in again)" : ""));
        return resp.json();
      })
      .then(function (doc) {
        data = doc;
        lastOk = Date.now() / 1000;
        $("fp-error").hidden = true;
        render(lastOk);
      })
      .catch(function (err) {
        var e = $("fp-error");
        e.textContent = "Could not refresh from " + config.api + ": " + err.message + (lastOk ? "; showing data from " + clock(lastOk) : "");
        e.hidden = false;
      })
      .then(schedule, schedule);
  }
  function schedule() {
    if (timer === null && document.visibilityState !== "hidden") timer = setTimeout(refresh, config.refresh_seconds * 1000);
  }
  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") { if (timer !== null) clearTimeout(timer); timer = null; refresh(); }
  });

  var params = new URLSearchParams(location.search);
  if (params.get("q")) $("fp-filter").value = params.get("q");
  if (SORTS[params.get("sort")]) $("fp-sort").value = params.get("sort");
  var rerender = function () { if (data) renderGroups(); };
  $("fp-filter").addEventListener("input", rerender);
  $("fp-sort").addEventListener("change", rerender);
  Array.prototype.forEach.call(document.querySelectorAll("#fp-severities input"), function (c) { c.addEventListener("change", rerender); });

  data = JSON.parse($("fp-initial").textContent);
  lastOk = Date.now() / 1000;
  render(lastOk);
  schedule();
})();
