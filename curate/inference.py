"""datatrove's InferenceRunner with curate's process handling (`curate.procs`): the server process it starts per
task (`vllm serve`) is stopped when the task's process ends, however it ends; SIGINT/SIGTERM let inference clean
up (close its request cache, stop its server) before the process stops."""

from __future__ import annotations

from datatrove.pipeline.inference.run_inference import InferenceRunner as DatatroveInferenceRunner
from datatrove.pipeline.inference.servers import InferenceServer

from curate import procs


class InferenceRunner(DatatroveInferenceRunner):
    """datatrove's InferenceRunner whose started server gets a keeper process, stoppable by a signal."""

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

    def run(self, data, rank: int = 0, world_size: int = 1) -> None:
        with self.track_time(unit="total"):
            procs.run_coroutine(self.run_async(data, rank))
