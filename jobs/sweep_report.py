"""The tables and plots of a sweep's finished runs: results.csv, results.md, one PNG per plot spec, and for 'train'
sweeps with `curves`, each metric against the training step, averaged over an axis (the seeds)."""
import csv
import json
import logging
import os
import shutil
import statistics

from jobs.sweeps import RESULT_FILE, expand, run_dir


def collect(sweep, root):
  """(rows, finished count): one row per run in expansion order; runs without result.json have only
  their settings."""
  rows, done = [], 0
  for run in expand(sweep):
    row = {'run': run.name, **run.settings}
    path = os.path.join(run_dir(root, sweep, run), RESULT_FILE)
    if os.path.exists(path):
      with open(path) as f:
        row.update(json.load(f)['metrics'])
      done += 1
    row['_values'] = run.values
    rows.append(row)
  return rows, done


def format_cell(value):
  if isinstance(value, float):
    if value == 0 or 1e-3 <= abs(value) < 1e5:
      return f'{value:.4g}'
    return f'{value:.3e}'
  return '' if value is None else str(value)


def write_tables(sweep, rows, done, out_dir):
  axes = [axis for axis, _ in sweep.axes]
  fields = []
  for row in rows:
    for key in row:
      if key not in fields and key not in axes and key not in ('run', '_values'):
        fields.append(key)
  csv_path = os.path.join(out_dir, 'results.csv')
  with open(csv_path + '.tmp', 'w', newline='') as f:
    writer = csv.DictWriter(f, ['run'] + axes + fields)
    writer.writeheader()
    for row in rows:
      writer.writerow({k: v for k, v in row.items() if k != '_values'})
  os.replace(csv_path + '.tmp', csv_path)
  columns = axes + [c for c in sweep.columns if c not in axes]
  lines = [
      f'Sweep `{sweep.name}` ({sweep.path}): {done} of {len(rows)} runs finished.', '',
      '| ' + ' | '.join(columns) + ' |', '|' + '|'.join('---' if c in axes else '---:' for c in columns) + '|'
  ]
  for row in rows:
    lines.append('| ' + ' | '.join(format_cell(row.get(c)) for c in columns) + ' |')
  md_path = os.path.join(out_dir, 'results.md')
  with open(md_path + '.tmp', 'w') as f:
    f.write('\n'.join(lines) + '\n')
  os.replace(md_path + '.tmp', md_path)
  return csv_path, md_path


def _plot_value(row, key):
  value = row['_values'].get(key, row.get(key))
  return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def write_plots(sweep, rows, out_dir):
  """One PNG per plot spec, one panel per y field, one line per value of the series axis."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  paths = []
  for spec in sweep.plots:
    ys = [spec['y']] if isinstance(spec['y'], str) else list(spec['y'])
    x, series, annotate = spec['x'], spec.get('series'), spec.get('annotate')
    fig, panels = plt.subplots(1, len(ys), figsize=(4.8 * len(ys), 3.8), squeeze=False)
    plotted = False
    for ax, y in zip(panels[0], ys):
      groups = {}
      for row in rows:
        if _plot_value(row, x) is not None and _plot_value(row, y) is not None:
          groups.setdefault(row.get(series, '') if series else '', []).append(row)
      for label, group in groups.items():
        group = sorted(group, key=lambda r: _plot_value(r, x))
        xs, vals = [_plot_value(r, x) for r in group], [_plot_value(r, y) for r in group]
        ax.plot(xs, vals, 'o-', label=f'{series}={label}' if series else None)
        plotted = True
        for r, xv, yv in zip(group, xs, vals):
          if annotate:
            ax.annotate(f'{annotate}={r[annotate]}', (xv, yv), textcoords='offset points', xytext=(4, 4), fontsize=7)
      ax.set_xlabel(spec.get('xlabel', x))
      ax.set_ylabel(y)
      if spec.get('logx'):
        ax.set_xscale('log')
        ticks = sorted({_plot_value(r, x) for g in groups.values() for r in g})
        if len(ticks) <= 8 and all(float(t).is_integer() for t in ticks):  # step counts: label the values
          ax.set_xticks(ticks, [f'{t:g}' for t in ticks])
          ax.minorticks_off()
      if spec.get('logy'):
        ax.set_yscale('log')
      ax.grid(alpha=0.3)
      if series and groups:
        ax.legend(fontsize=8)
    fig.suptitle(spec.get('title', f'{sweep.name}: {", ".join(ys)} vs {x}'), fontsize=10)
    fig.tight_layout()
    path = os.path.join(out_dir, spec.get('file', f'{"_".join(ys)}_vs_{x}.png'))
    if plotted:
      fig.savefig(path, dpi=90)
      paths.append(path)
    plt.close(fig)
  return paths


def collect_and_report(sweep, root, copy_to=None):
  out_dir = os.path.join(root, sweep.name)
  os.makedirs(out_dir, exist_ok=True)
  rows, done = collect(sweep, root)
  paths = list(write_tables(sweep, rows, done, out_dir)) + write_plots(sweep, rows, out_dir)
  paths += write_curves(sweep, root, rows, out_dir)
  if copy_to:
    os.makedirs(copy_to, exist_ok=True)
    for path in paths[1:]:  # results.md and the plots
      shutil.copyfile(path, os.path.join(copy_to, f'{sweep.name}_{os.path.basename(path)}'))
  logging.info('%d of %d runs finished; wrote %s', done, len(rows), ', '.join(paths))
  return paths


def eval_history(workdir, metric):
  """{step: value} of eval/<metric> in <workdir>/metrics.jsonl, the last value logged at each step."""
  history = {}
  path = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        record = json.loads(line)
        if f'eval/{metric}' in record:
          history[record['step']] = record[f'eval/{metric}']
  return history


def curve_statistics(histories):
  """[(step, mean, std, n)] over the steps every history evaluated; std is 0 for a single history."""
  steps = sorted(set.intersection(*(set(h) for h in histories))) if histories else []
  stats = []
  for step in steps:
    values = [h[step] for h in histories]
    stats.append((step, statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0, len(values)))
  return stats


def steps_to_reach(stats, target, lower_is_better=True):
  """The first evaluated step whose mean reaches target, or None."""
  for step, mean, _, _ in stats:
    if (mean <= target) if lower_is_better else (mean >= target):
      return step
  return None


def curve_tables(spec, curves):
  """Markdown lines: the mean +- std of spec['y'] at each step per series, its final mean and the steps it needs to
  reach the reference series' final mean."""
  y, series, reference = spec['y'], spec['series'], spec.get('reference')
  lower = spec.get('lower_is_better', True)
  target = curves[reference][-1][1] if reference in curves and curves[reference] else None
  steps = sorted({s for stats in curves.values() for s, _, _, _ in stats})
  lines = [
      f'`{y}`, mean ± std over `{spec["over"]}` (n runs), against the training step; "reaches" is the first evaluated '
      f'step whose mean is {"at most" if lower else "at least"} the final mean of {series}={reference}.', '',
      '| ' + ' | '.join([series, 'n', 'final', 'reaches'] + [str(s) for s in steps]) + ' |',
      '|---|' + '---:|' * (3 + len(steps))
  ]
  for label, stats in curves.items():
    at = {s: f'{m:.3f} ± {sd:.3f}' for s, m, sd, _ in stats}
    reach = steps_to_reach(stats, target, lower) if target is not None else None
    cells = [label, str(stats[-1][3]) if stats else '0', f'{stats[-1][1]:.4g}' if stats else '', format_cell(reach)]
    lines.append('| ' + ' | '.join(cells + [at.get(s, '') for s in steps]) + ' |')
  return lines


def write_curves(sweep, root, rows, out_dir):
  """For each `curves` spec {'y': metric, 'series': axis, 'over': axis averaged (e.g. the seed), 'reference': a
  label of the series axis, 'lower_is_better': bool, 'logy': bool}: curves_<y>.md (curve_tables) and
  curves_<y>.png, the mean against the training step with a band of +- one std, one line per series."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt
  paths = []
  for spec in sweep.curves:
    y, series = spec['y'], spec['series']
    histories = {}
    for row in rows:
      history = eval_history(os.path.join(root, sweep.name, row['run']), y)
      if history:
        histories.setdefault(row[series], []).append(history)
    curves = {label: curve_statistics(h) for label, h in histories.items()}
    md_path = os.path.join(out_dir, f'curves_{y}.md')
    with open(md_path + '.tmp', 'w') as f:
      f.write('\n'.join(curve_tables(spec, curves)) + '\n')
    os.replace(md_path + '.tmp', md_path)
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, stats in curves.items():
      steps = [s for s, _, _, _ in stats]
      means = [m for _, m, _, _ in stats]
      stds = [sd for _, _, sd, _ in stats]
      ax.plot(steps, means, 'o-', markersize=3, label=f'{series}={label}')
      ax.fill_between(steps, [m - s for m, s in zip(means, stds)], [m + s for m, s in zip(means, stds)], alpha=0.2)
    ax.set_xlabel('training step')
    ax.set_ylabel(f'{y} (mean over {spec["over"]})')
    if spec.get('logy'):
      ax.set_yscale('log')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(spec.get('title', f'{sweep.name}: {y} against training step'), fontsize=10)
    fig.tight_layout()
    png_path = os.path.join(out_dir, f'curves_{y}.png')
    fig.savefig(png_path, dpi=90)
    plt.close(fig)
    paths += [md_path, png_path]
  return paths
