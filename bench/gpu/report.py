"""The kit's outputs: ``report.json`` (everything measured) and ``summary.md`` (a page a person reads)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _fmt(value: Any, unit: str = "", digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}{unit}"
    return f"{value}{unit}"


def _status(phase: dict[str, Any]) -> str:
    reason = phase.get("reason") or phase.get("error")
    return phase.get("status", "not run") + (f" ({reason.splitlines()[0]})" if reason else "")


def summary(report: dict[str, Any]) -> str:
    phases = report["phases"]
    lines = [f"# MLOC GPU kit — {report['mode']}", "", report["note"], "",
             f"Machine: {report['machine']['gpu'] or 'no GPU'}; Python {report['machine']['python']}; "
             f"{report['seconds']:.0f} s in all.", ""]
    inv = phases.get("inventory", {})
    gpus = inv.get("gpus") or []
    lines += ["## Inventory", f"- {_status(inv)}; agent's GPU source: {inv.get('gpu_source', '-')}"]
    for g in gpus:
        lines.append(f"- {g.get('name')}: {_fmt(g.get('memory_total_mb'), ' MB')}, compute "
                     f"{g.get('compute_capability')}, driver {g.get('driver')}, {g.get('uuid')}, "
                     f"declared: {g.get('declared')}")
    stats = inv.get("stats_while_training") or {}
    lines += [f"- while training: {stats.get('with_gpu_stats', 0)} of {stats.get('samples', 0)} worker reads "
              f"carried GPU stats (peak {_fmt(stats.get('utilization_peak_pct'), ' %')}, "
              f"{_fmt(stats.get('memory_used_peak_mb'), ' MB')})", ""]
    sft = phases.get("sft", {})
    lines += ["## SFT, LoRA — MLOC vs bare TRL", f"- {_status(sft)}"]
    if sft.get("status") == "ok":
        m, b = sft["mloc"], sft["bare_trl"]
        lines += ["", "| | tokens/s | tokens | train s | wall s | first → final loss |", "|---|---|---|---|---|---|"]
        for label, run in (("MLOC sft", m), ("bare TRL", b)):
            lines.append(f"| {label} | {_fmt(run['tokens_per_s'])} | {_fmt(run['num_tokens'])} | "
                         f"{_fmt(run['train_runtime_s'], digits=2)} | {_fmt(run['wall_s'])} | "
                         f"{_fmt(run['first_loss'], digits=3)} → {_fmt(run['final_loss'], digits=3)} |")
        lines += ["", f"Ratio MLOC / bare TRL: **{_fmt(sft['ratio'], digits=3)}** (target ≥ {sft['target_ratio']}"
                  f"{'' if report['mode'] == 'gpu' else '; speed on this CPU dry run means nothing'})."]
    lines.append("")
    qlora, inf = phases.get("qlora", {}), phases.get("inference", {})
    lines += ["## QLoRA", f"- {_status(qlora)}"]
    if qlora.get("status") == "ok":
        lines.append(f"- {_fmt(qlora.get('tokens_per_s'))} tokens/s, 4-bit: {qlora.get('quantized_4bit')}")
    lines += ["", "## Inference", f"- transformers: {_status(inf)}"]
    if inf.get("status") == "ok":
        lines.append(f"- {_fmt(inf.get('tokens_per_s'))} tokens/s ({inf.get('completion_tokens')} tokens, "
                     f"{inf.get('prompts')} prompts, {inf.get('device')})")
    lines.append(f"- vLLM: {_status(inf.get('vllm') or {'status': 'skipped'})}")
    lines += ["", "## Distributed and warm starts", f"- distributed: {_status(phases.get('distributed', {}))}",
              f"- warm starts: {_status(phases.get('warm_starts', {}))}", "", "## Peak GPU memory vs the rule"]
    mem = phases.get("memory", {})
    lines.append(f"- {_status(mem)}")
    rows = mem.get("rows") or []
    if rows:
        lines += ["", "| phase | rule GB | measured GB (NVML) | torch reserved GB | rule - measured |",
                  "|---|---|---|---|---|"]
        for r in rows:
            lines.append(f"| {r['phase']} | {_fmt(r['predicted_gb'])} | {_fmt(r['measured_device_gb'], digits=2)} | "
                         f"{_fmt(r['measured_torch_reserved_gb'], digits=2)} | {_fmt(r.get('error_gb'), digits=2)} |")
    pack = report.get("packaging", {})
    lines += ["", "## Packaging", f"- {_status(pack)}"]
    if pack.get("archive_mb") is not None:
        lines.append(f"- {len(pack.get('wheels') or [])} wheels, {pack.get('pypi_total_mb')} MB on PyPI, carried as "
                     f"one {pack['archive_mb']} MB archive (limit {pack.get('carry_limit_mb')} MB with the tree); "
                     f"bitsandbytes carried: {pack.get('bitsandbytes_carried')}")
    failed = [n for n, p in {"packaging": pack, **phases}.items() if p.get("status") == "failed"]
    lines += ["", f"Failed phases: {', '.join(failed) if failed else 'none'}.", ""]
    return "\n".join(lines)


def write(out: Path, report: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "summary.md").write_text(summary(report))
