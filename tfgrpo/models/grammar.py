"""Grammar-constrained sampling that checks a few candidates per token instead of the whole vocabulary.

llama-cpp-python 0.3.36 puts llama.cpp's grammar sampler in front of top-k, so every generated token tests
all of Qwen's 151,936 tokens against the grammar: ~22 ms of CPU per token here, about as long as the model's
own forward pass on two cores. :func:`install` (called in the server's child process, see
``tfgrpo.models.local_server._BOOTSTRAP``) makes requests with a grammar test the ``TOP`` most likely tokens
first and the whole vocabulary only when none of those fits. Greedy decoding gives the same token as before
(the best allowed token is among the top ones whenever any allowed token is); sampling keeps the allowed
tokens among the ``TOP`` most likely, which top-k (40) and min-p then cut further as before, so it differs
from the stock order only when an allowed token ranked below ``TOP`` would have survived min-p.
"""

from __future__ import annotations

import ctypes
import weakref
from typing import Any

TOP = 64  # candidates tested against the grammar before the whole vocabulary


def install() -> None:
    """Patch ``Llama._init_sampler`` (server child only; imports llama_cpp)."""
    import llama_cpp
    import numpy as np
    from llama_cpp import _internals
    from llama_cpp.llama import Llama

    original = Llama._init_sampler
    dtype = np.dtype([("id", np.intc), ("logit", np.single), ("p", np.single)], align=True)

    def view(arr: Any) -> Any:
        data = (llama_cpp.llama_token_data * arr.size).from_address(ctypes.addressof(arr.data.contents))
        return np.frombuffer(data, dtype=dtype)

    class TopFirstGrammar:
        def __init__(self, model: Any, grammar: Any) -> None:
            self.g = llama_cpp.llama_sampler_init_grammar(
                model.vocab, grammar._grammar.encode("utf-8"), grammar._root.encode("utf-8")
            )
            iface = llama_cpp.llama_sampler_i()
            self._fns = (
                llama_cpp.llama_sampler_i_apply(lambda _s, cur: self.apply(cur)),
                llama_cpp.llama_sampler_i_accept(lambda _s, tok: llama_cpp.llama_sampler_accept(self.g, tok)),
                llama_cpp.llama_sampler_i_reset(lambda _s: llama_cpp.llama_sampler_reset(self.g)),
            )
            iface.apply, iface.accept, iface.reset = self._fns
            iface.name = llama_cpp.llama_sampler_i_name(0)
            iface.clone = llama_cpp.llama_sampler_i_clone(0)
            iface.free = llama_cpp.llama_sampler_i_free(0)
            self._iface = iface
            self.sampler = llama_cpp.llama_sampler()
            self.sampler.iface = ctypes.pointer(iface)
            self.sampler.ctx = None
            weakref.finalize(self, llama_cpp.llama_sampler_free, self.g)

        def get_sampler(self) -> Any:
            return ctypes.pointer(self.sampler)

        def apply(self, cur_p: Any) -> None:
            arr = cur_p.contents
            if arr.size <= TOP:
                llama_cpp.llama_sampler_apply(self.g, cur_p)
                return
            full = view(arr)
            top = np.argpartition(-full["logit"], TOP)[:TOP]
            small = np.ascontiguousarray(full[top])
            small_arr = llama_cpp.llama_token_data_array(
                data=small.ctypes.data_as(llama_cpp.llama_token_data_p), size=TOP, selected=-1, sorted=False
            )
            llama_cpp.llama_sampler_apply(self.g, ctypes.byref(small_arr))
            fits = small["logit"] > -np.inf
            if not fits.any():  # none of the likely tokens fits: test them all
                llama_cpp.llama_sampler_apply(self.g, cur_p)
                return
            logits = full["logit"].copy()
            full["logit"] = -np.inf
            full["logit"][top[fits]] = logits[top[fits]]
            arr.sorted = False
            arr.selected = -1

    def _init_sampler(self: Any, **kw: Any) -> Any:
        grammar = kw.get("grammar")
        if grammar is None or kw.get("logits_processor") is not None or kw.get("mirostat_mode", 0):
            return original(self, **kw)
        sampler = _internals.LlamaSampler()
        sampler.add_penalties(
            n_vocab=self._n_vocab,
            penalty_last_n=self.last_n_tokens_size,
            penalty_repeat=kw.get("repeat_penalty", 1.0),
            penalty_freq=kw.get("frequency_penalty", 0.0),
            penalty_present=kw.get("presence_penalty", 0.0),
        )
        custom = TopFirstGrammar(self._model, grammar)
        llama_cpp.llama_sampler_chain_add(sampler.sampler, custom.get_sampler())
        # removed from the chain before the chain is freed (as LlamaSampler.add_custom does)
        sampler.custom_samplers.append((llama_cpp.llama_sampler_chain_n(sampler.sampler) - 1, custom))  # type: ignore[arg-type]
        temp = kw.get("temp", 0.8)
        if temp < 0.0:
            sampler.add_dist(self._seed)
        elif temp == 0.0:
            sampler.add_greedy()
        else:
            sampler.add_top_k(kw.get("top_k", 40))
            sampler.add_typical(kw.get("typical_p", 1.0), 1)
            sampler.add_top_p(kw.get("top_p", 0.95), 1)
            sampler.add_min_p(kw.get("min_p", 0.05), 1)
            sampler.add_temp(temp)
            sampler.add_dist(self._seed)
        return sampler

    Llama._init_sampler = _init_sampler  # type: ignore[method-assign,assignment]
