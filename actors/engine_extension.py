"""Methods r1ray adds to every vLLM worker (``LLM(worker_extension_cls=...)``), called by name through
``collective_rpc``: a name crosses vLLM's message serialisation, a function would need its insecure
pickle fallback. Imported inside vLLM's worker processes, so it imports nothing heavy itself."""

from __future__ import annotations


class R1RayWorkerExtension:
    def r1ray_reseed(self, seed: int) -> None:
        """Seed this worker's torch generators: vLLM samples from the device's default generator."""
        import torch

        torch.manual_seed(int(seed))
