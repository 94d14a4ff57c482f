"""Preflight: before a stage does any work, every role's endpoint is reached, its model confirmed and one
1-token chat answered; a failure is one line (role, URL, model, the server's answer), an `EndpointError`
(exit 3). A missing API key is an `InputError` (exit 2) when the pool is built. Real local HTTP servers: the
real vLLM server for model names, the scripted server (a test double) for exact fault patterns."""

from __future__ import annotations

import asyncio

import pytest

from autoevol_train.errors import EndpointError, InputError
from autoevol_train.llm.client import LLMPool
from autoevol_train.llm.openai_backend import PREFLIGHT_ATTEMPTS
from autoevol_train.llm.types import OpenAIRole, TransformersRole
from tests.support.scripted_server import Faults, Reply


def preflight(roles) -> None:
    async def main():
        async with LLMPool(roles) as pool:
            await pool.preflight()
    asyncio.run(main())


def one_line_error(roles, kind=EndpointError) -> str:
    with pytest.raises(kind) as info:
        preflight(roles)
    message = str(info.value)
    assert "\n" not in message and type(info.value) is kind
    return message


def test_unreachable_port_is_one_line_naming_role_url_and_model():
    dead = "http://127.0.0.1:9/v1"
    message = one_line_error({"evol": OpenAIRole(model="x", base_urls=[dead])})
    assert message == f"evol: {dead} (model 'x'): connection refused"


def test_unknown_host_names_the_dns_failure():
    message = one_line_error({"judge": OpenAIRole(model="x", base_urls=["http://no-such-host.invalid/v1"])})
    assert message.startswith("judge: http://no-such-host.invalid/v1 (model 'x'): DNS lookup failed")


def test_every_http_500_is_retried_once_then_named(scripted_server):
    server = scripted_server(faults=Faults(error_rate=1.0))
    message = one_line_error({"evol": OpenAIRole(model="m", base_urls=[server.base_url])})
    assert message == f"evol: {server.base_url} (model 'm'): HTTP 500: injected server error"
    assert server.counters.requests == PREFLIGHT_ATTEMPTS


def test_http_401_is_not_retried(scripted_server):
    server = scripted_server(lambda body, i: Reply(status=401, content="Incorrect API key provided"))
    message = one_line_error({"optimizer": OpenAIRole(model="gpt-4", base_urls=[server.base_url])})
    assert message == f"optimizer: {server.base_url} (model 'gpt-4'): HTTP 401: Incorrect API key provided"
    assert server.counters.requests == 1


def test_the_served_model_list_is_checked_and_servers_without_one_get_the_chat_check(scripted_server):
    lists_other = scripted_server(served_models=["tiny", "big"])
    message = one_line_error({"evol": OpenAIRole(model="m", base_urls=[lists_other.base_url])})
    assert message == f"evol: {lists_other.base_url} (model 'm'): model 'm' is not served (served: tiny, big)"
    assert lists_other.counters.requests == 0  # no chat sent to a server that lacks the model

    lists_it = scripted_server(served_models=["m"])
    no_models_route = scripted_server()  # GET /v1/models answers 404
    both = [lists_it.base_url, no_models_route.base_url]
    preflight({"evol": OpenAIRole(model="m", base_urls=both),
               "responder": OpenAIRole(model="m", base_urls=both, preflight="chat", top_p=0.9),
               "judge": OpenAIRole(model="m", base_urls=[lists_other.base_url], preflight="chat")})
    body = lists_it.counters.bodies[0]
    assert body["max_tokens"] == 1 and body["model"] == "m"
    # evol and responder share one backend (same endpoint and model): one check for both.
    assert (lists_it.counters.requests, no_models_route.counters.requests) == (1, 1)
    assert lists_other.counters.requests == 1  # "chat" skips the model list: the judge's chat was answered


def test_preflight_off_sends_nothing_and_rate_limits_pass(scripted_server):
    limited = scripted_server(lambda body, i: Reply(status=429, content="slow down"))
    preflight({"evol": OpenAIRole(model="m", base_urls=["http://127.0.0.1:9/v1"], preflight="off"),
               "judge": OpenAIRole(model="m", base_urls=[limited.base_url])})
    assert limited.counters.requests == 1  # reachable and authenticated: the client's back-off handles 429s


def test_one_bad_url_of_several_is_named(scripted_server):
    good = scripted_server()
    bad = scripted_server(faults=Faults(error_rate=1.0))
    message = one_line_error({"evol": OpenAIRole(model="m", base_urls=[good.base_url, bad.base_url])})
    assert message.startswith(f"evol: {bad.base_url} (model 'm'): HTTP 500")


def test_missing_api_key_is_an_input_error_before_any_backend_is_built(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTOEVOL_TEST_UNSET_KEY", raising=False)
    roles = {"evol": TransformersRole(model=str(tmp_path / "never-loaded")),
             "optimizer": OpenAIRole(model="gpt-4", api_key_env="AUTOEVOL_TEST_UNSET_KEY")}
    with pytest.raises(InputError) as info:
        LLMPool({"optimizer": roles["optimizer"]})
    assert str(info.value) == "optimizer: api_key_env: environment variable AUTOEVOL_TEST_UNSET_KEY is not set"
    # The checks of every role run before any model loads: the missing directory is named, not a traceback.
    with pytest.raises(EndpointError, match=r"^evol: .*never-loaded: no such model directory$"):
        LLMPool(roles)


def test_in_process_models_must_exist_and_answer(tiny_llama):
    with pytest.raises(EndpointError) as info:
        LLMPool({"evol": TransformersRole(model="runs/tiny-model")})  # HF_HUB_OFFLINE=1 in the tests
    assert str(info.value) == ("evol: runs/tiny-model: no such model directory, nor a hub model in the local "
                               "cache (HF_HUB_OFFLINE is set)")
    preflight({"evol": TransformersRole(model=str(tiny_llama))})


@pytest.mark.slow
def test_real_vllm_server_wrong_model_name(vllm_server):
    message = one_line_error({"evol": OpenAIRole(model="tinny", base_urls=[vllm_server])})
    assert message == f"evol: {vllm_server} (model 'tinny'): model 'tinny' is not served (served: tiny)"
    # Without the model list, vLLM's own 404 for the chat is the answer quoted.
    message = one_line_error({"evol": OpenAIRole(model="tinny", base_urls=[vllm_server], preflight="chat")})
    assert message.startswith(f"evol: {vllm_server} (model 'tinny'): HTTP 404: ")
    assert "tinny" in message.split("HTTP 404: ", 1)[1]
    preflight({"evol": OpenAIRole(model="tiny", base_urls=[vllm_server])})
