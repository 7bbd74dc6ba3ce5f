// MLOC compare page: /compare?ids=a,b,c mounts the comparison view (compare.js) for those tasks.
"use strict";

(() => {
  const ids = (new URLSearchParams(location.search).get("ids") || "").split(",").map((s) => s.trim()).filter(Boolean);
  document.getElementById("compare-title").textContent = ids.length + " tasks";
  let view = null;
  const session = MLOC.session(() => start());
  function start() {
    session.ready();
    if (view) view.stop();
    const box = document.getElementById("compare");
    if (!ids.length) { box.textContent = "Name the tasks to compare: /compare?ids=ID,ID,…"; return; }
    view = MLOCCompare.mount(box, ids, { onAuthError: () => session.needLogin() });
  }
  MLOC.api("/api/v1/overview").then((o) => { MLOC.showWho(o); start(); }).catch((e) => {
    if (e instanceof MLOC.AuthError) session.needLogin(); else start();
  });
})();
