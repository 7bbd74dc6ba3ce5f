// MLOC task page: state, progress, curves, attempts, artifacts (polled) and live logs (server-sent events).
"use strict";

(() => {
  const { api, el, ago, duration, bar, badge, fill, when, eta } = MLOC;
  const FINAL = new Set(["succeeded", "failed", "cancelled"]);
  // an attempt's model_cached (docs/scheduling.md, Placement): whether its agent held the hub model
  const MODEL_CACHED = { true: " · model cached", false: " · model fetched", null: "", undefined: "" };
  const MAX_LOG_NODES = 5000; // the oldest lines leave the page; the API keeps them all
  const taskId = decodeURIComponent(location.pathname.split("/").pop());
  const base = "/api/v1/tasks/" + encodeURIComponent(taskId);
  const $ = (id) => document.getElementById(id);
  let last = null;
  let cursor = { attempt: 0, seq: -1 };
  let following = false;
  let logsDone = false; // the server sent "end": the task is final and every chunk arrived
  let artifactsShownFor = "";
  const history = new MLOCChart.History();
  let curvesDone = false; // the task is final and its last points arrived

  function fmtBytes(n) {
    if (n == null) return "–";
    const units = ["B", "KB", "MB", "GB", "TB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return n.toFixed(i ? 1 : 0) + " " + units[i];
  }

  function facts(t) {
    const rows = [["id", t.id], ["type", t.task_type], ["user", t.user], ["priority", t.priority],
      ["submitted", when(t.created_at)], ["started", when(t.started_at)], ["finished", when(t.finished_at)],
      ["attempts", t.attempts + " of " + t.max_attempts + (t.preemptions ? " · preempted " + t.preemptions +
        "× (not counted against the attempts)" : "")]];
    if (t.lease) rows.push(["running on", t.lease.agent + " · GPUs " + (t.lease.gpus.join(",") || "none") + " · epoch " + t.lease.epoch]);
    if (t.lease && t.lease.preempting) rows.push(["preempting", t.lease.preempting + " — checkpointing, then back to the queue"]);
    if (t.pipeline) rows.push(["pipeline", el("a", { href: "/pipelines/" + encodeURIComponent(t.pipeline.id), id: "task-pipeline" },
      t.pipeline.id + " · step " + t.pipeline.step)]);
    if (t.values) rows.push(["values", Object.entries(t.values).map(([k, v]) => k + "=" + v).join(", ")]);
    if (t.pending_reason) rows.push(["why it waits", t.pending_reason]);
    if (t.last_checkpoint) rows.push(["last checkpoint", t.last_checkpoint.name + " (step " + t.last_checkpoint.step + ")"]);
    if (t.exit_code != null) rows.push(["exit code", t.exit_code]);
    if (t.error) rows.push(["error", t.error]);
    if (t.result) rows.push(["result", JSON.stringify(t.result)]);
    $("task-facts").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", { text: k }), v instanceof Node ? el("dd", {}, v) : el("dd", { class: "mono", text: String(v) })]));
  }

  function render(t) {
    last = t;
    document.title = "MLOC — " + (t.name || t.id);
    $("task-title").textContent = t.name || t.id;
    $("task-name").textContent = t.name + " (" + t.id + ")";
    $("task-state").replaceChildren(badge(t.cancel_requested && !FINAL.has(t.state) ? "cancelling" : t.state));
    $("cancel").classList.toggle("hidden", FINAL.has(t.state) || t.cancel_requested);
    const p = t.progress || {};
    $("task-progress").replaceChildren(...(t.state === "running" || t.progress ? [bar(t.progress),
      el("div", { class: "mono", text: [p.step != null && p.total ? "step " + p.step + "/" + p.total : "",
        p.loss != null ? "loss " + p.loss : "", p.message || "",
        t.state === "running" ? "ETA " + duration(eta(t)) : ""].filter(Boolean).join(" · ") })] : []));
    facts(t);
    fill($("attempts-body"), (t.attempt_history || []).map((a) => el("tr", {},
      el("td", { text: String(a.attempt) }), el("td", { text: (a.agent || "–") + MODEL_CACHED[String(a.model_cached)] + (a.start ? " · " + a.start + " start" : "") }), el("td", { text: a.gpus.join(",") || "–" }),
      el("td", { text: when(a.started_at) }), el("td", { text: when(a.ended_at) }),
      el("td", { text: duration((a.ended_at || MLOC.now()) - a.started_at) }),
      el("td", {}, badge(a.outcome || "running")), el("td", { class: "mono", text: a.error || "" }))), 8, "not started yet");
    $("spec").textContent = JSON.stringify(t.spec, null, 2);
  }

  async function artifacts(t) {
    const key = t.state + ":" + t.attempts + ":" + Math.floor(Date.now() / 5000);
    if (key === artifactsShownFor) return;
    artifactsShownFor = key;
    const body = await api(base + "/artifacts");
    $("artifacts-total").textContent = String(body.artifacts.length);
    fill($("artifacts-body"), body.artifacts.map((a) => el("tr", {},
      el("td", {}, el("a", { href: a.url, onclick: download(a), text: a.name })), el("td", { text: a.kind }),
      el("td", { text: a.step == null ? "–" : String(a.step) }), el("td", { text: fmtBytes(a.size) }),
      el("td", { text: String(a.attempt) }), el("td", { text: ago(a.created_at) }))), 6, "no artifact yet");
  }

  // With a token the link needs the Authorization header: fetch it, then save the bytes.
  const download = (a) => async (ev) => {
    if (!MLOC.token()) return; // loopback: the plain link works
    ev.preventDefault();
    const resp = await fetch(a.url, { headers: MLOC.authHeaders() });
    if (!resp.ok) { alert("download failed: HTTP " + resp.status); return; }
    const url = URL.createObjectURL(await resp.blob());
    el("a", { href: url, download: a.name.split("/").pop() }).click();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  };

  // The loss curve (reward and KL for ppo/grpo), polled with since= the last point, so each poll carries
  // only the new points. ``t`` was read before the poll: once it is final, this poll has the last points.
  async function curves(t) {
    if (curvesDone) return;
    const added = await history.poll(api, taskId);
    if (FINAL.has(t.state)) curvesDone = true;
    if (!added && $("curves").childNodes.length) return;
    const charts = MLOCChart.metricsFor(t.task_type).map((m, i) => MLOCChart.lineChart(m.label,
      [{ label: m.label, color: MLOCChart.color(i), points: history.values(m.get) }])).filter((c) => c.querySelector("path"));
    const n = history.points().length;
    $("curves-total").textContent = n ? n + " points" : "";
    $("curves").replaceChildren(...(charts.length ? charts
      : [el("p", { class: "empty", text: FINAL.has(t.state) ? "no progress history" : "no points yet" })]));
  }

  function appendLog(chunk) {
    const pane = $("logs");
    const atBottom = pane.scrollTop + pane.clientHeight >= pane.scrollHeight - 20;
    pane.append(el("span", { class: chunk.stream, "data-attempt": chunk.attempt }, chunk.data));
    while (pane.childNodes.length > MAX_LOG_NODES) pane.firstChild.remove();
    if (atBottom) pane.scrollTop = pane.scrollHeight;
    cursor = { attempt: chunk.attempt, seq: chunk.seq };
  }

  // Server-sent events read with fetch (EventSource cannot send the Authorization header).
  async function followLogs() {
    if (following || logsDone) return;
    following = true;
    $("logs-status").textContent = "following";
    try {
      const q = new URLSearchParams({ after_attempt: cursor.attempt, after_seq: cursor.seq });
      const resp = await fetch(base + "/logs?" + q, { headers: MLOC.authHeaders({ Accept: "text/event-stream" }) });
      if (!resp.ok) throw new Error("HTTP " + resp.status);
      const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
      let buf = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += value;
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const event = buf.slice(0, cut);
          buf = buf.slice(cut + 2);
          const data = event.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("\n");
          if (event.startsWith("event: end")) { logsDone = true; $("logs-status").textContent = "complete"; return; }
          if (data) appendLog(JSON.parse(data));
        }
      }
      $("logs-status").textContent = "disconnected; reconnecting";
    } catch (e) {
      $("logs-status").textContent = "log stream failed (" + e.message + "); retrying";
    } finally {
      following = false;
    }
    setTimeout(followLogs, 2000); // the stream dropped before the end: resume from the cursor
  }

  $("cancel").addEventListener("click", async () => {
    if (!confirm("Cancel task " + taskId + "?")) return;
    try { await api(base + "/cancel", { method: "POST" }); } catch (e) { $("cancel-msg").textContent = e.message; }
    tick();
  });

  const session = MLOC.session(() => { session.ready(); tick(); });
  const tick = MLOC.every(2000, async () => {
    let t;
    try { t = await api(base); } catch (e) {
      if (e instanceof MLOC.AuthError) session.needLogin();
      throw e;
    }
    session.ready();
    render(t);
    await curves(t);
    await artifacts(t);
    followLogs();
    window.mlocRefreshes = (window.mlocRefreshes || 0) + 1;
  });
  api("/api/v1/overview").then((o) => { MLOC.setServerTime(o.server_time, Date.now() / 1000); MLOC.showWho(o); }).catch(() => {});
  tick();
})();
