"""Test stand-in for the `vllm` package: datatrove checks that `vllm` is importable before it runs
`vllm serve`; tests/bin/vllm maps that command onto llama.cpp's server."""
