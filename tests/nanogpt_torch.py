"""nanoGPT's model layout in PyTorch, for the interop tests (test_hf imports it lazily)."""

import torch


class NanoGPTBlock(torch.nn.Module):
    """nanoGPT's block (model.py): nn.Linear layers, exact GELU, optional biases."""

    def __init__(self, d: int, heads: int, bias: bool):
        super().__init__()
        self.ln_1 = torch.nn.LayerNorm(d, bias=bias)
        self.attn = torch.nn.Module()
        self.attn.c_attn = torch.nn.Linear(d, 3 * d, bias=bias)
        self.attn.c_proj = torch.nn.Linear(d, d, bias=bias)
        self.ln_2 = torch.nn.LayerNorm(d, bias=bias)
        self.mlp = torch.nn.Module()
        self.mlp.c_fc = torch.nn.Linear(d, 4 * d, bias=bias)
        self.mlp.c_proj = torch.nn.Linear(4 * d, d, bias=bias)
        self.heads = heads

    def forward(self, x):
        B, T, D = x.shape
        q, k, v = self.attn.c_attn(self.ln_1(x)).split(D, dim=2)
        q, k, v = (t.view(B, T, self.heads, D // self.heads).transpose(1, 2) for t in (q, k, v))
        y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn.c_proj(y.transpose(1, 2).reshape(B, T, D))
        return x + self.mlp.c_proj(torch.nn.functional.gelu(self.mlp.c_fc(self.ln_2(x))))


class NanoGPT(torch.nn.Module):
    def __init__(self, vocab: int, block_size: int, d: int, layers: int, heads: int, bias: bool):
        super().__init__()
        self.transformer = torch.nn.Module()
        self.transformer.wte = torch.nn.Embedding(vocab, d)
        self.transformer.wpe = torch.nn.Embedding(block_size, d)
        self.transformer.h = torch.nn.ModuleList(
            NanoGPTBlock(d, heads, bias) for _ in range(layers)
        )
        self.transformer.ln_f = torch.nn.LayerNorm(d, bias=bias)
        self.lm_head = torch.nn.Linear(d, vocab, bias=False)
        self.lm_head.weight = self.transformer.wte.weight  # tied
        for p in self.parameters():  # non-trivial norms and biases too
            torch.nn.init.normal_(p, std=0.2)

    def forward(self, idx):
        x = self.transformer.wte(idx) + self.transformer.wpe(torch.arange(idx.shape[1]))
        for block in self.transformer.h:
            x = block(x)
        return self.lm_head(self.transformer.ln_f(x))
