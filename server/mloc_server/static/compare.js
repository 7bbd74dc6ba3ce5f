// MLOC comparison view: several tasks' curves overlaid (one colour each) and a sortable table of their final
// metrics and differing hyperparameters. `MLOCCompare.mount(container, ids)` is the reusable part: the compare
// page mounts it with ?ids=, a pipeline or sweep page with its steps' task ids.
"use strict";

const MLOCCompare = (() => {
  const { api, el } = MLOC;
  const FINAL = new Set(["succeeded", "failed", "cancelled"]);

  function sortRows(rows, key, dir) {
    const missing = dir > 0 ? Infinity : -Infinity;
    const val = (r) => {
      const v = key(r);
      return v === null || v === undefined ? missing : v;
    };
    return rows.slice().sort((a, b) => {
      const va = val(a), vb = val(b);
      if (typeof va === "number" && typeof vb === "number") return dir * (va - vb);
      return dir * String(va).localeCompare(String(vb));
    });
  }

  const cell = (v) => (v === null || v === undefined ? "–" : typeof v === "number" ? String(+v.toPrecision(5))
    : typeof v === "object" ? JSON.stringify(v) : String(v));

  // Mount the view in `container`; it refreshes itself while any task runs. Returns {refresh, stop}.
  function mount(container, ids, opts = {}) {
    const every = opts.intervalMs || 3000;
    const histories = new Map(ids.map((id) => [id, new MLOCChart.History()]));
    const charts = el("div", { class: "charts", id: "compare-charts" });
    const legendBox = el("div", { id: "compare-legend" });
    const table = el("table", { id: "compare-table" });
    const status = el("p", { class: "total", id: "compare-status" });
    container.replaceChildren(status, legendBox, charts, table);
    let data = null;
    let sort = { col: null, dir: 1 };
    let timer = null;
    let stopped = false;

    const colour = (id) => MLOCChart.color(ids.indexOf(id));
    const label = (t) => t.name || t.id;

    function drawCharts() {
      const types = [...new Set(data.tasks.map((t) => t.task_type))];
      // the metrics of every task type shown, once each (a sweep is one type; mixed ones get all their curves)
      const seen = new Set();
      const metrics = types.flatMap((ty) => MLOCChart.metricsFor(ty)).filter((m) => !seen.has(m.key) && seen.add(m.key));
      const drawn = metrics.map((m) => MLOCChart.lineChart(m.label, data.tasks.map((t) => ({
        label: label(t), color: colour(t.id), points: histories.get(t.id).values(m.get) }))));
      const withPoints = drawn.filter((c) => c.querySelector("path"));
      charts.replaceChildren(...(withPoints.length ? withPoints : drawn.slice(0, 1)));
      legendBox.replaceChildren(MLOCChart.legend(data.tasks.map((t) => ({
        label: label(t), color: colour(t.id), href: "/tasks/" + encodeURIComponent(t.id) }))));
    }

    function columns() {
      return [
        { name: "task", key: (t) => label(t), render: (t) => el("a", { href: "/tasks/" + encodeURIComponent(t.id) }, label(t)) },
        { name: "type", key: (t) => t.task_type },
        { name: "state", key: (t) => t.state, render: (t) => MLOC.badge(t.state) },
        { name: "step", key: (t) => t.step },
        ...data.hyperparameters.map((h) => ({ name: h, key: (t) => t.hyperparameters[h], kind: "hp" })),
        ...data.metrics.map((m) => ({ name: m, key: (t) => t.metrics[m], kind: "metric" })),
      ];
    }

    function drawTable() {
      const cols = columns();
      const head = el("tr", {}, cols.map((c) => el("th", {
        class: "sortable" + (c.kind ? " " + c.kind : ""), "data-col": c.name,
        "aria-sort": sort.col === c.name ? (sort.dir > 0 ? "ascending" : "descending") : "none",
        onclick: () => { sort = { col: c.name, dir: sort.col === c.name ? -sort.dir : 1 }; drawTable(); },
      }, c.name + (sort.col === c.name ? (sort.dir > 0 ? " ▲" : " ▼") : ""))));
      const by = cols.find((c) => c.name === sort.col);
      const rows = by ? sortRows(data.tasks, by.key, sort.dir) : data.tasks;
      const body = rows.map((t) => el("tr", { "data-task": t.id }, cols.map((c) =>
        el("td", { class: c.kind === "metric" || c.name === "step" ? "mono num" : c.kind ? "mono" : null,
          "data-col": c.name }, c.render ? c.render(t) : cell(c.key(t))))));
      table.replaceChildren(el("thead", {}, head), el("tbody", {}, body));
    }

    async function refresh() {
      clearTimeout(timer);
      if (stopped) return;
      try {
        data = await api("/api/v1/compare?ids=" + ids.map(encodeURIComponent).join(","));
        await Promise.all(data.tasks.map((t) => histories.get(t.id).poll(api, t.id)));
        status.textContent = data.tasks.length + " tasks";
        drawCharts();
        drawTable();
        window.mlocCompareRefreshes = (window.mlocCompareRefreshes || 0) + 1;
      } catch (e) {
        status.textContent = "could not load the comparison: " + e.message;
        if (e instanceof MLOC.AuthError && opts.onAuthError) { opts.onAuthError(); return; }
      }
      if (!data || data.tasks.some((t) => !FINAL.has(t.state))) timer = setTimeout(refresh, every);
    }

    refresh();
    return { refresh, stop() { stopped = true; clearTimeout(timer); } };
  }

  return { mount, sortRows };
})();
