"""datatrove's InferenceRunner, except that the server process it starts per task (`vllm serve`) is stopped
when the task's process ends, however it ends (`curate.procs.keep`)."""

from __future__ import annotations

from datatrove.pipeline.inference.run_inference import InferenceRunner as DatatroveInferenceRunner
from datatrove.pipeline.inference.servers import InferenceServer

from curate import procs


class InferenceRunner(DatatroveInferenceRunner):
    """datatrove's InferenceRunner whose started server gets a keeper process."""

    def _init_server(self, rank: int) -> InferenceServer:
        server = super()._init_server(rank)
        start_server = server.start_server

        async def start_and_keep():
            process = await start_server()
            if process is not None:
                procs.keep(process.pid)
            return process

        server.start_server = start_and_keep
        return server
