"""Round-trip a notebook through a plain-text 'percent' script, for editors and agents.

    python tools/nbtool.py to-py nbs/01_router.ipynb  /tmp/router.py   # notebook -> script (outputs dropped)
    python tools/nbtool.py to-nb /tmp/router.py nbs/01_router.ipynb    # script -> notebook

Cells are separated by lines `# %%` (code) and `# %% [markdown]` (markdown; each line after it starts
with '# '). The notebook stays the source: convert, edit, convert back, then nbdev_clean, nbdev_export,
and execute the notebook to refresh its outputs.
"""
import json, sys

def to_nb(src, dst):
    cells, kind, buf = [], None, []
    def flush():
        if kind is None: return
        lines = list(buf)
        while lines and not lines[-1].strip(): lines.pop()
        if kind == 'markdown': lines = [l[2:] if l.startswith('# ') else l.lstrip('#') for l in lines]
        text = '\n'.join(lines)
        c = {'cell_type': kind, 'metadata': {}, 'source': text.splitlines(keepends=True)}
        if kind == 'code': c.update(execution_count=None, outputs=[])
        cells.append(c)
    for line in open(src).read().splitlines():
        if line.startswith('# %%'):
            flush(); buf = []
            kind = 'markdown' if '[markdown]' in line else 'code'
        elif kind is not None: buf.append(line)
    flush()
    nb = {'cells': cells, 'metadata': {'kernelspec': {'display_name': 'python3', 'language': 'python', 'name': 'python3'}},
          'nbformat': 4, 'nbformat_minor': 5}
    json.dump(nb, open(dst, 'w'), indent=1); open(dst, 'a').write('\n')

def to_py(src, dst):
    nb = json.load(open(src)); out = []
    for c in nb['cells']:
        text = ''.join(c['source'])
        if c['cell_type'] == 'markdown':
            out.append('# %% [markdown]\n' + '\n'.join('# ' + l if l else '#' for l in text.splitlines()))
        else: out.append('# %%\n' + text)
    open(dst, 'w').write('\n\n'.join(out) + '\n')

if __name__ == '__main__':
    cmd, a, b = sys.argv[1:4]
    {'to-nb': to_nb, 'to-py': to_py}[cmd](a, b)
