// MLOC curves: hand-written SVG line charts of tasks' progress history (no library, nothing from the network).
"use strict";

const MLOCChart = (() => {
  const NS = "http://www.w3.org/2000/svg";
  const COLORS = ["#2f6fed", "#d92d20", "#12a150", "#d98e04", "#7a5af8", "#0ba5ec", "#c11574", "#667085"];
  const W = 560, H = 220, PAD = { l: 56, r: 12, t: 24, b: 30 };

  const color = (i) => COLORS[i % COLORS.length];

  function svg(tag, attrs, ...children) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) node.setAttribute(k, v);
    for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    return node;
  }

  const fmt = (v) => {
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(1);
    return String(+v.toPrecision(3));
  };

  function ticks(lo, hi, n) {
    if (lo === hi) return [lo];
    return Array.from({ length: n + 1 }, (_, i) => lo + ((hi - lo) * i) / n);
  }

  // What to draw for a task type: the loss, or reward and KL for the RL trainers (ppo: reward_mean, kl;
  // grpo, through TRL's logs: reward, kl). Each has a label and a getter from a progress point.
  function metricsFor(taskType) {
    const metric = (...names) => (p) => {
      const m = p.metrics || {};
      for (const n of names) if (typeof m[n] === "number") return m[n];
      return null;
    };
    const loss = { key: "loss", label: "loss", get: (p) => (typeof p.loss === "number" ? p.loss : null) };
    if (taskType === "ppo" || taskType === "grpo") {
      return [{ key: "reward", label: "reward", get: metric("reward_mean", "reward") },
        { key: "kl", label: "KL", get: metric("kl", "policy_kl", "approx_kl") }, loss];
    }
    return [loss];
  }

  // One chart: series [{label, color, points: [[step, value], ...]}] on shared axes; empty series are skipped.
  function lineChart(title, series) {
    const drawn = series.filter((s) => s.points.length);
    const root = svg("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": title,
      "data-chart": title });
    root.append(svg("text", { x: PAD.l, y: 15, class: "chart-title" }, title));
    if (!drawn.length) {
      root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "chart-empty" }, "no points yet"));
      return root;
    }
    const xs = drawn.flatMap((s) => s.points.map((p) => p[0]));
    const ys = drawn.flatMap((s) => s.points.map((p) => p[1]));
    let [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    if (x0 === x1) { x0 -= 1; x1 += 1; }
    if (y0 === y1) { const d = Math.abs(y0) * 0.1 || 1; y0 -= d; y1 += d; }
    const sx = (x) => PAD.l + ((x - x0) / (x1 - x0)) * (W - PAD.l - PAD.r);
    const sy = (y) => H - PAD.b - ((y - y0) / (y1 - y0)) * (H - PAD.t - PAD.b);
    for (const v of ticks(y0, y1, 4)) {
      root.append(svg("line", { x1: PAD.l, x2: W - PAD.r, y1: sy(v), y2: sy(v), class: "grid" }));
      root.append(svg("text", { x: PAD.l - 6, y: sy(v) + 4, "text-anchor": "end", class: "tick" }, fmt(v)));
    }
    for (const v of ticks(x0, x1, 4)) {
      root.append(svg("text", { x: sx(v), y: H - PAD.b + 16, "text-anchor": "middle", class: "tick" }, fmt(Math.round(v))));
    }
    root.append(svg("text", { x: W - PAD.r, y: H - 2, "text-anchor": "end", class: "tick" }, "step"));
    for (const s of drawn) {
      const d = s.points.map((p, i) => (i ? "L" : "M") + sx(p[0]).toFixed(1) + " " + sy(p[1]).toFixed(1)).join(" ");
      const path = svg("path", { d, fill: "none", stroke: s.color, "stroke-width": 2, "data-series": s.label,
        "data-points": s.points.length });
      path.append(svg("title", {}, s.label));
      root.append(path);
      if (s.points.length === 1) {
        const [x, y] = s.points[0];
        root.append(svg("circle", { cx: sx(x), cy: sy(y), r: 3, fill: s.color }));
      }
    }
    return root;
  }

  // A legend: one swatch and label per series (the swatch is SVG: the page's CSP allows no inline style).
  function legend(items) {
    const box = document.createElement("div");
    box.className = "legend";
    for (const { label, color: c, href } of items) {
      const item = document.createElement(href ? "a" : "span");
      if (href) item.href = href;
      item.className = "legend-item";
      item.append(svg("svg", { width: 14, height: 10 }, svg("rect", { width: 14, height: 10, rx: 2, fill: c })),
        document.createTextNode(" " + label));
      box.append(item);
    }
    return box;
  }

  // Progress points of one task, merged as they arrive (a step sent again replaces its point), in order.
  class History {
    constructor() { this.byKey = new Map(); this.since = null; }
    add(points) {
      for (const p of points) {
        this.byKey.set(p.attempt + ":" + p.step, p);
        if (this.since === null || p.t > this.since) this.since = p.t;
      }
      return points.length;
    }
    points() {
      return [...this.byKey.values()].sort((a, b) => a.attempt - b.attempt || a.step - b.step);
    }
    // [[step, value]] of one metric; a later attempt (resumed from a checkpoint) continues the same line
    values(get) {
      return this.points().map((p) => [p.step, get(p)]).filter(([, v]) => typeof v === "number" && isFinite(v));
    }
    async poll(api, taskId) {
      const q = this.since === null ? "" : "?since=" + encodeURIComponent(this.since);
      const body = await api("/api/v1/tasks/" + encodeURIComponent(taskId) + "/progress" + q);
      return this.add(body.points);
    }
  }

  return { color, lineChart, legend, metricsFor, History };
})();
