"""LangGraph against ThunderAgent-SGLang: one graph run (a ReAct agent: model, tools, model,
...) is one LLM program. The id rides every model call as the X-Program-Id header
(``ChatOpenAI(default_headers=...)``); the run releases the program when it ends.

    .venv/bin/python examples/langgraph_agent.py --server http://127.0.0.1:30000
"""

from __future__ import annotations

import argparse
import uuid

import httpx
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from langgraph.graph import START, MessagesState, StateGraph
from langgraph.prebuilt import ToolNode, tools_condition


@tool
def word_count(text: str) -> int:
    """Count the words in a text."""
    return len(text.split())


def make_agent(server: str, program_id: str, model: str = "demo", api_key: str = "none"):
    """A ReAct graph: the model, then its tool calls (if any), then the model again."""
    llm = ChatOpenAI(model=model, base_url=f"{server}/v1", api_key=api_key, max_tokens=64,
                     temperature=0, max_retries=0,
                     default_headers={"X-Program-Id": program_id}).bind_tools([word_count])
    graph = StateGraph(MessagesState)
    graph.add_node("model", lambda state: {"messages": [llm.invoke(state["messages"])]})
    graph.add_node("tools", ToolNode([word_count]))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition)
    graph.add_edge("tools", "model")
    return graph.compile()


def run(server: str, task: str, program_id: str, api_key: str = "none") -> dict:
    """One graph run as program ``program_id``; released at the end."""
    agent = make_agent(server, program_id, api_key=api_key)
    try:
        return agent.invoke({"messages": [("user", task)]}, {"recursion_limit": 8})
    finally:
        httpx.post(f"{server}/programs/{program_id}/release", timeout=30,
                   headers={"Authorization": f"Bearer {api_key}"})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--server", default="http://127.0.0.1:30000")
    p.add_argument("--task", default="How many words are in 'the quick brown fox'?")
    args = p.parse_args()
    program_id = f"langgraph-{uuid.uuid4().hex[:8]}"
    state = run(args.server, args.task, program_id)
    print(f"{program_id}: {len(state['messages'])} messages; last: "
          f"{state['messages'][-1].content!r}")


if __name__ == "__main__":
    main()
