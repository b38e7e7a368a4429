"""End to end: the client openapi-generator made from generated/openapi-3.0.json against a
real server (conftest.py). The scenario every client suite walks, in Python."""

import pytest

from agentplane_client import AgentsApi, IdentityApi
from agentplane_client.exceptions import ApiException
from agentplane_client.models import (
    AgentInput,
    AgentPatch,
    AgentStatus,
    ApiKeyInput,
    ErrorEnvelope,
    Scope,
)


def expect_error(excinfo: pytest.ExceptionInfo, status: int, code: str) -> ErrorEnvelope:
    err = excinfo.value
    assert err.status == status, err
    assert isinstance(err.data, ErrorEnvelope), f"decoded into the envelope: {err.body}"
    assert err.data.error.code == code
    assert err.data.error.request_id
    return err.data


@pytest.fixture(scope="module")
def agents(api):
    return AgentsApi(api)


@pytest.fixture(scope="module")
def state():
    return {}


def test_authenticates_with_a_key(server, api):
    me = IdentityApi(api).get_current_user()
    assert me.role.value == "admin"
    with server.client("ap_not_a_real_key") as stranger:
        with pytest.raises(ApiException) as excinfo:
            AgentsApi(stranger).list_agents()
    expect_error(excinfo, 401, "INVALID_API_KEY")


def test_creates(agents, state):
    resp = agents.create_agent_with_http_info(
        AgentInput(name="py agent", type="assistant", tags=["py"], description="from Python"),
        idempotency_key="py-create-1",
    )
    assert resp.status_code == 201
    agent = resp.data
    assert agent.id.startswith("agent_")
    assert resp.headers["location"] == f"/v1/agents/{agent.id}"
    assert resp.headers["etag"] == '"1"'
    assert agent.version == 1
    state["id"], state["etag"] = agent.id, resp.headers["etag"]
    replay = agents.create_agent(
        AgentInput(name="py agent", type="assistant", tags=["py"], description="from Python"),
        idempotency_key="py-create-1",
    )
    assert replay.id == agent.id, "an idempotent retry replays the first create"
    for i in range(4):
        agents.create_agent(
            AgentInput(name=f"py filler {i}", type="analyzer" if i % 2 else "assistant")
        )


def test_gets(agents, state):
    agent = agents.get_agent(state["id"])
    assert agent.name == "py agent"
    assert agent.tags == ["py"]


def test_lists_with_filters_and_pagination(agents, state):
    page1 = agents.list_agents(per_page=2, sort="name")
    assert len(page1.data) == 2
    assert page1.pagination.total == 5
    assert page1.pagination.pages == 3
    cursor = page1.pagination.next_cursor
    assert cursor
    page2 = agents.list_agents(limit=2, sort="name", cursor=cursor)
    assert page2.pagination.page == 2
    assert {a.id for a in page1.data}.isdisjoint({a.id for a in page2.data})
    analyzers = agents.list_agents(filter_type="analyzer", fields=["id", "name", "type"])
    assert analyzers.pagination.total == 2
    for agent in analyzers.data:
        assert agent.type == "analyzer"
        assert agent.description is None and agent.tags is None, "only the fields asked for"
    searched = agents.list_agents(search="FROM python")
    assert [a.id for a in searched.data] == [state["id"]]


def test_patches(agents, state):
    resp = agents.update_agent_with_http_info(
        state["id"],
        AgentPatch(status=AgentStatus.INACTIVE, tags=["patched"]),
        if_match=state["etag"],
    )
    assert resp.status_code == 200
    assert resp.data.status == AgentStatus.INACTIVE
    assert resp.data.tags == ["patched"]
    assert resp.data.name == "py agent", "PATCH keeps what it does not name"
    assert resp.headers["etag"] == '"2"'


def test_conditional_get_answers_304(agents, state):
    # openapi-generator's python client raises for every non-2xx status, 304 included
    # (clients/README.md).
    with pytest.raises(ApiException) as excinfo:
        agents.get_agent(state["id"], if_none_match='"2"')
    assert excinfo.value.status == 304
    assert agents.get_agent_with_http_info(state["id"], if_none_match='"1"').status_code == 200


def test_a_stale_update_answers_412(agents, state):
    with pytest.raises(ApiException) as excinfo:
        agents.replace_agent(state["id"], AgentInput(name="stale"), if_match=state["etag"])
    expect_error(excinfo, 412, "PRECONDITION_FAILED")


def test_deletes_then_404_with_the_error_envelope(agents, state):
    resp = agents.delete_agent_with_http_info(state["id"])
    assert resp.status_code == 204
    with pytest.raises(ApiException) as excinfo:
        agents.get_agent(state["id"])
    envelope = expect_error(excinfo, 404, "AGENT_NOT_FOUND")
    assert envelope.error.type == "not_found_error"


def test_a_key_is_shown_once_used_and_revoked(server, api):
    identity = IdentityApi(api)
    created = identity.create_api_key(ApiKeyInput(name="py key", scopes=[Scope.READ_COLON_AGENTS]))
    assert created.key.startswith(created.prefix)
    with server.client(created.key) as reader:
        assert AgentsApi(reader).list_agents().pagination.total >= 0
        with pytest.raises(ApiException) as excinfo:
            AgentsApi(reader).create_agent(AgentInput(name="no"))
        expect_error(excinfo, 403, "INSUFFICIENT_PERMISSIONS")
        listed = identity.list_api_keys(per_page=100)
        assert created.id in {k.id for k in listed.data}
        assert created.key not in listed.to_json(), "secrets are never listed"
        identity.revoke_api_key(created.id)
        with pytest.raises(ApiException) as excinfo:
            AgentsApi(reader).list_agents()
        expect_error(excinfo, 401, "INVALID_API_KEY")


def test_a_tool_call_pauses_for_its_output_then_resumes(api):
    """A client-side (`function`) tool: the execution pauses in `requires_action` with the
    call, and posting its output resumes it to an answer built from that output."""
    from agentplane_client import ExecutionsApi, ToolsApi
    from agentplane_client.models import ExecuteRequest, ToolInput, ToolOutputs

    tool = ToolsApi(api).create_tool(ToolInput.from_dict({
        "type": "function", "name": "lookup_order", "description": "Look up an order",
        "parameters": {"type": "object", "properties": {"order_id": {"type": "string"}}},
    }))
    agent = AgentsApi(api).create_agent(AgentInput.from_dict({"name": "Orders", "tools": [tool.id]}))
    runs = ExecutionsApi(api)
    paused = runs.execute_agent(agent.id, ExecuteRequest.from_dict(
        {"input": "Where is my order 42?", "options": {"wait": True}}))
    assert paused.status.value == "requires_action", paused
    calls = paused.required_action.tool_calls
    assert [c.name for c in calls] == ["lookup_order"]
    runs.submit_tool_outputs(paused.id, ToolOutputs.from_dict(
        {"tool_outputs": [{"tool_call_id": calls[0].id, "output": "shipped"}]}))
    import time
    for _ in range(200):
        done = runs.get_execution(paused.id)
        if done.status.value != "requires_action" and done.status.value not in ("queued", "running"):
            break
        time.sleep(0.05)
    assert done.status.value == "succeeded", done
    assert "shipped" in done.result.output


def test_a_flow_runs_node_by_node(api):
    """A flow agent: one `node` step per node run, each with its `node_id`."""
    from agentplane_client import ExecutionsApi
    from agentplane_client.models import ExecuteRequest

    agent = AgentsApi(api).create_agent(AgentInput.from_dict({"name": "Flow", "flow": {
        "nodes": [
            {"id": "draft", "type": "llm", "config": {"prompt": "Answer: {{input}}"}},
            {"id": "out", "type": "output"},
        ],
        "edges": [{"source": "entry", "target": "draft"}, {"source": "draft", "target": "out"}],
    }}))
    done = ExecutionsApi(api).execute_agent(agent.id, ExecuteRequest.from_dict(
        {"input": "hello", "options": {"wait": True}}))
    assert done.status.value == "succeeded", done
    nodes = [s.node_id for s in done.steps if s.name == "node"]
    assert nodes == ["draft", "out"], done.steps
