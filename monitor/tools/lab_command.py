"""`monitor lab`: policies over a daily price history through the engine, with a simulated desk.

The lab's modules (pandas, matplotlib) are imported when the command runs, not when `monitor`
starts: every other command, the worker included, would pay for them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import yaml

if TYPE_CHECKING:
    from monitor.tools.lab import LabPolicy, Market

DEFAULT_DATASET = "skfolio-sp500"
TICK_MS = 86_400_000  # the lab's evaluation window, monitor.tools.lab.TICK_MS (a test holds them equal)


def default_market(dataset: str = DEFAULT_DATASET) -> Market:
    """The bundled closes with the study fund's reference data."""
    from monitor.tools.datasets import load_dataset, study_instruments
    from monitor.tools.lab import Market, prepare_closes

    return Market(prepare_closes(load_dataset(dataset)), tuple(study_instruments()))


def default_policies() -> list[LabPolicy]:
    """The default study: every baseline on the multi-strategy fund's limits."""
    from monitor.tools.baselines import baselines
    from monitor.tools.datasets import study_limits

    return baselines(study_limits)


def read_documents(path: Path) -> Any:
    text = path.read_text(encoding="utf-8")
    return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)


def file_market(prices: Path, instruments: Path) -> Market:
    from monitor.tools.datasets import read_closes
    from monitor.tools.lab import Market, prepare_closes

    docs = read_documents(instruments)
    if not isinstance(docs, list):
        raise click.ClickException(f"{instruments}: expected a list of instrument documents")
    return Market(prepare_closes(read_closes(prices)), tuple(docs))


def chosen_policies(policy_files: tuple[Path, ...], with_baselines: bool, grid: Path | None) -> list[LabPolicy]:
    """The policies a command line asks for: files, baselines on their limits, a grid on the first."""
    from monitor.tools.baselines import baselines, read_grid, scaled_limits
    from monitor.tools.datasets import study_limits
    from monitor.tools.lab import LabPolicy

    docs = [read_documents(p) for p in policy_files]
    out: list[LabPolicy] = []
    for path, doc in zip(policy_files, docs):
        name = str(doc.get("portfolio_id") or path.stem)
        out.append(LabPolicy.named(name if name not in {p.name for p in out} else f"{name}-{path.stem}", doc))
    if with_baselines or not (docs or grid):
        out += baselines(scaled_limits(docs[0]["limits"]), base_currency=docs[0]["base_currency"]) if docs \
            else default_policies()
    if grid is not None:
        base = docs[0] if docs else next(p.doc for p in baselines(study_limits) if p.name == "band-20-inner")
        out += read_grid(grid, base)
    return out


@click.command("lab")
@click.option("--prices", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="CSV: a date column and one column of closes per instrument_id")
@click.option("--instruments", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="JSON or YAML list of instrument documents (optional `adv_usd`: ADV re-set monthly)")
@click.option("--dataset", help=f"Bundled real closes instead of --prices/--instruments [default: {DEFAULT_DATASET}]")
@click.option("--policy", "policy_files", multiple=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A policy document (YAML/JSON), repeatable")
@click.option("--baselines/--no-baselines", "with_baselines", default=False,
              help="Also run the built-in baselines, on the first policy's limits (the default without --policy or --grid)")
@click.option("--grid", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML: `vary: {dotted.key: [values]}` (and `base:`) varies a base policy")
@click.option("--nav", type=float, default=100e6, show_default=True, help="Opening NAV, base currency")
@click.option("--from", "start", help="First date (YYYY-MM-DD)")
@click.option("--to", "end", help="Last date (YYYY-MM-DD)")
@click.option("--fill", type=click.Choice(["next", "same"]), default="next", show_default=True,
              help="The desk executes a signal at the next date's close, or at the signal's own close")
@click.option("--auto-approve", is_flag=True, help="Drop the policies' approval sections: every signal is auto")
@click.option("--jobs", type=int, default=2, show_default=True, help="Worker processes (policies split over them)")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("lab-report"),
              show_default=True, help="Report folder")
@click.option("--events", type=click.Path(dir_okay=False, path_type=Path),
              help=f"Also write the event log the lab fed the engine (`monitor replay --tick-ms {TICK_MS}` it)")
def lab_command(prices: Path | None, instruments: Path | None, dataset: str | None, policy_files: tuple[Path, ...],
                with_baselines: bool, grid: Path | None, nav: float, start: str | None, end: str | None, fill: str,
                auto_approve: bool, jobs: int, out: Path, events: Path | None) -> None:
    """Run rebalancing policies over daily closes through the engine; write results.csv, report.md/html."""
    from monitor.engine.model import Rejected
    from monitor.engine.policy import PolicyError
    from monitor.tools.lab import LabPolicy, run_lab, write_log
    from monitor.tools.lab_figures import results_table
    from monitor.tools.lab_report import write_report

    if (prices is None) != (instruments is None):
        raise click.ClickException("--prices and --instruments go together")
    began = time.perf_counter()
    try:
        market = (file_market(prices, instruments) if prices and instruments  # type: ignore[arg-type]
                  else default_market(dataset or DEFAULT_DATASET)).between(start, end)
        policies = chosen_policies(policy_files, with_baselines, grid)
        if auto_approve:
            policies = [LabPolicy(p.name, _without_approval(p.doc)) for p in policies]
        records = run_lab(market, policies, nav=nav, fill=fill, jobs=jobs)
    except (ValueError, FileNotFoundError, PolicyError, Rejected) as e:  # bad input: say why, no traceback
        raise click.ClickException(str(e)) from None
    records = {p.name: records[p.name] for p in policies}
    results = results_table(records, market.closes)
    dates = market.closes.index
    about = (f"{len(policies)} policies over {len(dates):,} dates ({dates[0]:%Y-%m-%d} to {dates[-1]:%Y-%m-%d}), "
             f"{len(market.closes.columns)} instruments, opening NAV {nav:,.0f}; signals executed at the "
             f"{'next date' if fill == 'next' else 'same'} close, paying the engine's cost estimate.")
    written = write_report(out, results, records, market.closes, about)
    if events is not None:
        with open(events, "wb") as sink:
            lines = write_log(market, records, sink)
        click.echo(f"wrote {lines:,} events to {events}", err=True)
    click.echo(f"{about}\nwrote {', '.join(str(p) for p in written)} in {time.perf_counter() - began:.1f} s",
               err=True)


def _without_approval(doc: dict[str, Any]) -> dict[str, Any]:
    if "rebalance" not in doc:
        return doc
    return {**doc, "rebalance": {k: v for k, v in doc["rebalance"].items() if k != "approval"}}
