"""Methods r1ray adds to every vLLM worker (``LLM(worker_extension_cls=...)``), called by name through
``collective_rpc``: a name crosses vLLM's message serialisation, a function would need its insecure
pickle fallback. Imported inside vLLM's worker processes, so it imports nothing heavy itself."""

from __future__ import annotations


class R1RayWorkerExtension:
    def r1ray_reseed(self, seed: int) -> None:
        """Seed this worker's torch generators: vLLM samples from the device's default generator."""
        import torch

        torch.manual_seed(int(seed))

    def r1ray_load_checkpoint(self, path: str) -> None:
        """Reload this worker's weights in place from the checkpoint folder ``path`` (vLLM's layerwise reload,
        which re-packs the CPU linear layers), then re-pack the embeddings: a tied output head would keep the
        old ones (see ``cluster/transfer/gloo.py``)."""
        from cluster.transfer.gloo import repack_embeddings

        self.reload_weights(weights_path=str(path))
        repack_embeddings(self.model_runner.get_model())
