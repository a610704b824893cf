"""The token embedding's gradient (`layers.embedding_backward`) by how the step's ids are distributed, in CUDA graphs.

One program a vocabulary row sums its tokens; with every frequent id's tokens walked by one program, a skewed
batch (a byte-level corpus: the space is ≈ 1/6 of the text; a BPE vocabulary's commonest tokens a few per cent) made
the step wait for the longest row. The chunk sums (`_embed_part_kernel`) split such rows. Rows: `small` (T 16384,
V 32000, H 1024) and Qwen3 (T 16384, V 151936, H 2048) shapes; ids uniform, Zipfian (exponent 1 over the vocabulary),
byte-like (Zipfian over 256 ids, exponent 1.2) and one id for every token; torch's `index_add_` into a zero fp32
matrix (the gradient of `nn.Embedding` without the cast) as the anchor in the same run.

    PYTHONPATH=$PWD python3 benchmarks/embed_bwd.py --tag new   # GPU: $OUT/embed_bwd-<tag>.json
"""
import os, json, argparse, datetime
import torch
from pithtrain.layers import embedding_backward
from qk_norm_rope import graph_us   # after pithtrain: it puts this checkout first on sys.path (an A/B imports the old tree)

def zipf(n, k, a, gen): return torch.multinomial(torch.arange(1, k + 1, device='cuda').float() ** -a, n, replacement=True, generator=gen)

if __name__ == '__main__':
    ap = argparse.ArgumentParser(); ap.add_argument('--tag', default='run'); a = ap.parse_args()
    gen = torch.Generator(device='cuda').manual_seed(0)
    res = {'date': str(datetime.date.today()), 'device': torch.cuda.get_device_name(), 'tag': a.tag,
           'command': f'python3 benchmarks/embed_bwd.py --tag {a.tag}', 'rows': []}
    for shape, (T, V, H) in {'small': (16384, 32000, 1024), 'qwen3-30b-a3b-6l': (16384, 151936, 2048)}.items():
        dy = torch.randn(T, H, device='cuda', generator=gen).to(torch.bfloat16)
        dists = {'uniform': torch.randint(0, V, (T,), device='cuda', generator=gen), 'zipf-1.0': zipf(T, V, 1.0, gen),
                 'bytes-zipf-1.2': zipf(T, 256, 1.2, gen), 'one-id': torch.full((T,), 7, device='cuda')}
        for name, ids in dists.items():
            top = torch.bincount(ids, minlength=V).max().item()
            want = torch.zeros(V, H, device='cuda').index_add_(0, ids, dy.float())
            err = ((embedding_backward(ids, dy, V) - want).norm() / want.norm()).item()
            us = graph_us(lambda: embedding_backward(ids, dy, V), n=10)
            anchor = graph_us(lambda: torch.zeros(V, H, device='cuda').index_add_(0, ids, dy.float()), n=10)
            row = dict(shape=shape, ids=name, most_tokens_one_id=top, us=round(us, 1), index_add_us=round(anchor, 1), rel_err=err)
            res['rows'].append(row); print(row, flush=True)
    out = os.environ.get('OUT')
    if out: json.dump(res, open(os.path.join(out, f'embed_bwd-{a.tag}.json'), 'w'), indent=1)
