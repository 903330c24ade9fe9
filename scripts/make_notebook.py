"""Write notebooks/tao_results.ipynb (kept as code so its cells are reviewed like code)."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

CELLS = [
    new_markdown_cell(
        "# TAO results\n\n"
        "Reads the catalog of the last `kedro run` through a Kedro session (no hard-coded paths): "
        "reward distributions per round, accuracy per model with 95% CIs, round health, and the "
        "benchmark items the tuned model fixed and broke. Pick the environment with `KEDRO_ENV` "
        "(e.g. `KEDRO_ENV=smoke`) before starting Jupyter."
    ),
    new_code_cell("%load_ext kedro.ipython\n%reload_kedro"),
    new_code_cell(
        "import json\n\n"
        "import matplotlib.pyplot as plt\n"
        "import pandas as pd\n\n"
        "rounds = []\n"
        "k = 1\n"
        "while catalog.exists(f'round_{k}.scored'):\n"
        "    rounds.append(f'round_{k}')\n"
        "    k += 1\n"
        "print('rounds found:', rounds)"
    ),
    new_markdown_cell("## Reward distribution per round"),
    new_code_cell(
        "fig, ax = plt.subplots(figsize=(7, 3.5))\n"
        "for name in rounds:\n"
        "    scored = catalog.load(f'{name}.scored')\n"
        "    ax.hist(scored['reward'], bins=20, alpha=0.5, label=name)\n"
        "ax.set_xlabel('reward (label-free)')\n"
        "ax.set_ylabel('candidates')\n"
        "ax.legend()\n"
        "plt.show()"
    ),
    new_markdown_cell("## Accuracy per model, with 95% bootstrap CIs"),
    new_code_cell(
        "results = catalog.load('eval_results')\n"
        "labeled = results[results['metric'].isin(['accuracy', 'pass@1']) | "
        "results['metric'].str.startswith('maj@')]\n"
        "table = labeled.pivot_table(index='model', columns='metric', values='value')\n"
        "display(table.round(3))\n"
        "acc = results[results['metric'] == 'accuracy'].reset_index(drop=True)\n"
        "fig, ax = plt.subplots(figsize=(6, 3))\n"
        "ax.errorbar(acc['model'], acc['value'], "
        "yerr=[acc['value'] - acc['ci_low'], acc['ci_high'] - acc['value']], fmt='o', capsize=4)\n"
        "ax.set_ylabel('greedy accuracy')\n"
        "plt.show()"
    ),
    new_markdown_cell("## Paired comparison with the base model"),
    new_code_cell("catalog.load('eval_paired')"),
    new_markdown_cell("## Round health (label-free collapse signals)"),
    new_code_cell(
        "health = {name: catalog.load(f'{name}.health') for name in rounds}\n"
        "pd.DataFrame({name: h.get('signals', {}) for name, h in health.items()}).round(3)"
    ),
    new_code_cell(
        "for name, h in health.items():\n"
        "    verdict = h.get('verdict', h)\n"
        "    print(name, 'collapsed' if verdict.get('collapsed') else 'healthy', "
        "verdict.get('reasons', []))"
    ),
    new_markdown_cell(
        "## How right the label-free rewards were (audit against `usage_gold`, never trained on)"
    ),
    new_code_cell(
        "audits = {name: catalog.load(f'{name}.reward_audit') for name in rounds\n"
        "          if catalog.exists(f'{name}.reward_audit')}\n"
        "pd.DataFrame({\n"
        "    name: {\n"
        "        'prompts': len(a),\n"
        "        'pseudo-label given': a['pseudo_label_correct'].notna().mean(),\n"
        "        'pseudo-label right': a['pseudo_label_correct'].dropna().astype(bool).mean(),\n"
        "        'top-reward right': a['top_reward_correct'].mean(),\n"
        "        'some candidate right': (a['n_correct'] > 0).mean(),\n"
        "        'reward AUC': a['reward_auc'].mean(),\n"
        "    }\n"
        "    for name, a in audits.items()\n"
        "}).round(3)"
    ),
    new_markdown_cell("## What the tuned model fixed and broke"),
    new_code_cell(
        "per_prompt = catalog.load('eval_per_prompt')\n"
        "bench = per_prompt[per_prompt['benchmark'] == per_prompt['benchmark'].iloc[0]]\n"
        "wide = bench.pivot_table(index='item_id', columns='model', values='accuracy')\n"
        "tuned = rounds[-1] if rounds else None\n"
        "if tuned is not None and tuned in wide:\n"
        "    fixed = wide[(wide['base'] == 0) & (wide[tuned] == 1)].index\n"
        "    broke = wide[(wide['base'] == 1) & (wide[tuned] == 0)].index\n"
        "    print(f'{tuned}: fixed {len(fixed)}, broke {len(broke)} of {len(wide)} items')\n"
        "    cols = ['item_id', 'model', 'prompt', 'reference', 'greedy_completion']\n"
        "    show = bench[bench['model'].isin(['base', tuned])]\n"
        "    display(show[show['item_id'].isin(list(fixed[:3]))][cols])\n"
        "    display(show[show['item_id'].isin(list(broke[:3]))][cols])"
    ),
]


def main() -> None:
    notebook = new_notebook(cells=CELLS)
    notebook.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    out = Path(__file__).resolve().parents[1] / "notebooks" / "tao_results.ipynb"
    nbformat.write(notebook, out)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
