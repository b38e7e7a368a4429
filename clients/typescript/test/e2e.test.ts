// End to end: the generated TypeScript client against a real server this test starts. Every
// request and response below is typed by src/schema.d.ts; `tsc` failing is a test failure too.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import {
  createAgentplaneClient,
  isErrorEnvelope,
  type AgentplaneClient,
  type ErrorEnvelope,
  type Schemas,
} from "../src/index.js";
import { startServer, type RunningServer } from "./server.js";

let server: RunningServer;
let api: AgentplaneClient;

before(async () => {
  server = await startServer();
  api = createAgentplaneClient(server.baseUrl, server.adminKey);
});
after(async () => {
  await server?.stop();
});

function expectError(error: ErrorEnvelope | undefined, status: number, actual: number, code: string) {
  assert.equal(actual, status);
  assert.ok(isErrorEnvelope(error), `an error envelope: ${JSON.stringify(error)}`);
  assert.equal(error.error.code, code);
  assert.ok(error.error.request_id.length > 0);
}

describe("agents scenario", () => {
  let id = "";
  let etag = "";

  test("authenticates with a key", async () => {
    const { data, response } = await api.GET("/v1/users/me");
    assert.equal(response.status, 200);
    assert.equal(data?.role, "admin");
    const anonymous = createAgentplaneClient(server.baseUrl, "ap_not_a_real_key");
    const { error, response: denied } = await anonymous.GET("/v1/agents");
    expectError(error, 401, denied.status, "INVALID_API_KEY");
  });

  test("creates", async () => {
    const { data, response } = await api.POST("/v1/agents", {
      params: { header: { "Idempotency-Key": "ts-create-1" } },
      body: { name: "ts agent", type: "assistant", tags: ["ts"], description: "from TypeScript" },
    });
    assert.equal(response.status, 201);
    assert.ok(data);
    id = data.id;
    assert.match(id, /^agent_/);
    assert.equal(response.headers.get("location"), `/v1/agents/${id}`);
    etag = response.headers.get("etag") ?? "";
    assert.equal(etag, '"1"');
    assert.equal(data.version, 1);
    for (let i = 0; i < 4; i++) {
      const { response: r } = await api.POST("/v1/agents", {
        body: { name: `ts filler ${i}`, type: i % 2 ? "analyzer" : "assistant" },
      });
      assert.equal(r.status, 201);
    }
  });

  test("gets", async () => {
    const { data, response } = await api.GET("/v1/agents/{agent_id}", {
      params: { path: { agent_id: id } },
    });
    assert.equal(response.status, 200);
    assert.equal(data?.name, "ts agent");
    assert.deepEqual(data?.tags, ["ts"]);
  });

  test("lists with filters and pagination", async () => {
    const page1 = await api.GET("/v1/agents", { params: { query: { per_page: 2, sort: "name" } } });
    assert.equal(page1.response.status, 200);
    assert.equal(page1.data?.data.length, 2);
    assert.equal(page1.data?.pagination.total, 5);
    assert.equal(page1.data?.pagination.pages, 3);
    const cursor = page1.data?.pagination.next_cursor;
    assert.ok(cursor);
    const page2 = await api.GET("/v1/agents", {
      params: { query: { limit: 2, sort: "name", cursor } },
    });
    assert.equal(page2.data?.pagination.page, 2);
    const analyzers = await api.GET("/v1/agents", {
      params: { query: { "filter[type]": "analyzer", fields: ["id", "name", "type"] } },
    });
    assert.equal(analyzers.data?.pagination.total, 2);
    for (const agent of analyzers.data?.data ?? []) {
      assert.equal(agent.type, "analyzer");
      assert.deepEqual(Object.keys(agent).sort(), ["id", "name", "type"]);
    }
    const searched = await api.GET("/v1/agents", { params: { query: { search: "FROM typescript" } } });
    assert.equal(searched.data?.data[0]?.id, id);
  });

  test("patches", async () => {
    const { data, response } = await api.PATCH("/v1/agents/{agent_id}", {
      params: { path: { agent_id: id }, header: { "If-Match": etag } },
      body: { status: "inactive", description: null },
    });
    assert.equal(response.status, 200);
    assert.equal(data?.status, "inactive");
    assert.equal(data?.description, undefined, "null clears");
    assert.equal(data?.version, 2);
    assert.equal(response.headers.get("etag"), '"2"');
  });

  test("conditional GET answers 304", async () => {
    const { response } = await api.GET("/v1/agents/{agent_id}", {
      params: { path: { agent_id: id }, header: { "If-None-Match": '"2"' } },
    });
    assert.equal(response.status, 304);
  });

  test("a stale update answers 412", async () => {
    const { error, response } = await api.PUT("/v1/agents/{agent_id}", {
      params: { path: { agent_id: id }, header: { "If-Match": etag } },
      body: { name: "stale" },
    });
    expectError(error, 412, response.status, "PRECONDITION_FAILED");
  });

  test("deletes, then 404 with the error envelope", async () => {
    const { response } = await api.DELETE("/v1/agents/{agent_id}", {
      params: { path: { agent_id: id } },
    });
    assert.equal(response.status, 204);
    const { data, error, response: gone } = await api.GET("/v1/agents/{agent_id}", {
      params: { path: { agent_id: id } },
    });
    assert.equal(data, undefined);
    expectError(error, 404, gone.status, "AGENT_NOT_FOUND");
  });
});

describe("identity scenario", () => {
  test("creates a key shown once, uses it, revokes it", async () => {
    const { data, response } = await api.POST("/v1/auth/keys", {
      body: { name: "ts key", scopes: ["read:agents"] },
    });
    assert.equal(response.status, 201);
    assert.ok(data);
    assert.ok(data.key.startsWith(data.prefix));
    const reader = createAgentplaneClient(server.baseUrl, data.key);
    assert.equal((await reader.GET("/v1/agents")).response.status, 200);
    const denied = await reader.POST("/v1/agents", { body: { name: "no" } });
    expectError(denied.error, 403, denied.response.status, "INSUFFICIENT_PERMISSIONS");
    const listed = await api.GET("/v1/auth/keys", { params: { query: { per_page: 100 } } });
    assert.ok(listed.data?.data.some((k) => k.id === data.id));
    assert.ok(!JSON.stringify(listed.data).includes(data.key), "secrets are never listed");
    const revoked = await api.DELETE("/v1/auth/keys/{key_id}", { params: { path: { key_id: data.id } } });
    assert.equal(revoked.response.status, 204);
    const after = await reader.GET("/v1/agents");
    expectError(after.error, 401, after.response.status, "INVALID_API_KEY");
  });
});

describe("agents that act", () => {
  // `execute` answers JSON or an event stream; with `wait` and no `Accept`, JSON.
  const execution = (body: unknown) => body as Schemas["Execution"];

  test("a tool call pauses for its output, then resumes", async () => {
    const tool = await api.POST("/v1/tools", {
      body: {
        type: "function",
        name: "lookup_order",
        description: "Look up an order",
        parameters: { type: "object", properties: { order_id: { type: "string" } } },
      },
    });
    assert.equal(tool.response.status, 201);
    assert.ok(tool.data);
    const agent = await api.POST("/v1/agents", { body: { name: "Orders", tools: [tool.data.id] } });
    assert.ok(agent.data);
    const paused = await api.POST("/v1/agents/{agent_id}/execute", {
      params: { path: { agent_id: agent.data.id } },
      body: { input: "Where is my order 42?", options: { wait: true } },
    });
    const pausedRun = execution(paused.data);
    assert.equal(pausedRun.status, "requires_action");
    const calls = pausedRun.required_action?.tool_calls ?? [];
    assert.deepEqual(calls.map((c) => c.name), ["lookup_order"]);
    const call = calls[0];
    assert.ok(call);
    const posted = await api.POST("/v1/executions/{execution_id}/tool-outputs", {
      params: { path: { execution_id: pausedRun.id } },
      body: { tool_outputs: [{ tool_call_id: call.id, output: "shipped" }] },
    });
    assert.equal(posted.response.status, 202);
    let status: string = "requires_action";
    let output = "";
    for (let i = 0; i < 200 && !["succeeded", "failed"].includes(status); i++) {
      const got = await api.GET("/v1/executions/{execution_id}", {
        params: { path: { execution_id: pausedRun.id } },
      });
      status = got.data?.status ?? status;
      output = got.data?.result?.output ?? "";
      await new Promise((r) => setTimeout(r, 50));
    }
    assert.equal(status, "succeeded");
    assert.ok(output.includes("shipped"), output);
  });

  test("a flow runs node by node", async () => {
    const agent = await api.POST("/v1/agents", {
      body: {
        name: "Flow",
        flow: {
          nodes: [
            { id: "draft", type: "llm", config: { prompt: "Answer: {{input}}" } },
            { id: "out", type: "output" },
          ],
          edges: [
            { source: "entry", target: "draft" },
            { source: "draft", target: "out" },
          ],
        },
      },
    });
    assert.equal(agent.response.status, 201);
    assert.ok(agent.data);
    const done = await api.POST("/v1/agents/{agent_id}/execute", {
      params: { path: { agent_id: agent.data.id } },
      body: { input: "hello", options: { wait: true } },
    });
    const run = execution(done.data);
    assert.equal(run.status, "succeeded");
    const nodes = run.steps.filter((s) => s.name === "node").map((s) => s.node_id);
    assert.deepEqual(nodes, ["draft", "out"]);
  });
});
