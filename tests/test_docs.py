"""The docs stay true: every example runs and prints what the pages show, and the
reference lists exactly the public names.

The examples live in ``docs/examples/*.py``; the pages include them with
``literalinclude``, and show their output from the ``.out`` file beside each, which
this module checks against a real run.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, open_websocket_url

from trio_hub import Message

from .redis_server import RedisServer

DOCS = Path(__file__).resolve().parent.parent / "docs"
EXAMPLES = DOCS / "examples"

# Modules whose ``__all__`` the reference page must list, name for name.
PUBLIC_MODULES = (
    "trio_hub",
    "trio_hub.testing",
    "trio_hub.asgi",
    "trio_hub.backends",
    "trio_hub.backends.redis",
)

# Examples that are servers: they run until SIGINT or SIGTERM, so they have their
# own test below instead of a ``.out`` file.
SERVERS = {"chat_server.py"}

# Examples that are not scripts, and the test module that runs them.
TESTED_ELSEWHERE = {
    "quart_trio_app.py": "tests/test_asgi.py",
    "plain_asgi_app.py": "tests/test_asgi.py",
    "chat_app.py": "tests/test_plugin.py",
    "test_chat_app.py": "tests/test_plugin.py",
    "redis_node.py": "tests/test_cli_redis.py",
    "presence_redis.py": "tests/test_presence_redis.py",
}

EXAMPLE_TIMEOUT = 60


def example_scripts() -> list[Path]:
    return sorted(
        path
        for path in EXAMPLES.glob("*.py")
        if path.name not in SERVERS and path.name not in TESTED_ELSEWHERE
    )


def pages() -> list[Path]:
    return sorted(path for path in DOCS.rglob("*.rst") if "_build" not in path.parts)


# ------------------------------------------------------------------ reference


def documented_names() -> dict[str, set[str]]:
    """The names documented with ``auto*`` directives, by module, in reference.rst."""
    names: dict[str, set[str]] = {}
    module = None
    directive = re.compile(r"^\.\. (currentmodule|module|auto\w+):: (\S+)", re.MULTILINE)
    for kind, target in directive.findall((DOCS / "reference.rst").read_text()):
        if kind in ("currentmodule", "module", "automodule"):
            module = target
            continue
        assert module is not None, f"{kind}:: {target} comes before any currentmodule"
        names.setdefault(module, set()).add(target)
    return names


@pytest.mark.parametrize("module_name", PUBLIC_MODULES)
def test_the_reference_lists_exactly_the_public_names(module_name: str) -> None:
    module = importlib.import_module(module_name)
    public = set(module.__all__)
    documented = documented_names().get(module_name, set())
    assert sorted(public - documented) == [], "public but not in docs/reference.rst"
    assert sorted(documented - public) == [], "in docs/reference.rst but not in __all__"


def test_the_close_code_table_lists_every_code() -> None:
    from trio_hub import CloseCode

    design = (DOCS / "design.rst").read_text()
    for code in CloseCode:
        row = f"   * - ``{code.value}``\n     - :attr:`~trio_hub.CloseCode.{code.name}`"
        assert row in design, f"no row for {code!r} in the close-code table"


def test_the_tests_that_the_design_page_names_exist() -> None:
    design = (DOCS / "design.rst").read_text()
    cited = set(re.findall(r"``(tests/test_\w+\.py)::(test_\w+)``", design))
    assert len(cited) >= 20
    for path, name in sorted(cited):
        source = (DOCS.parent / path).read_text()
        assert re.search(rf"^(async )?def {name}\(", source, re.MULTILINE), f"{path}::{name}"


# ------------------------------------------------------------ the CLI page


def help_defaults() -> dict[str, str]:
    """Each option of ``python -m trio_hub serve --help``, and the default its help gives."""
    result = subprocess.run(
        [sys.executable, "-m", "trio_hub", "serve", "--help"],
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT,
        check=True,
    )
    # An option's entry starts on a line of its own ("  --port PORT  ...") and
    # goes on over more deeply indented lines; anything else ends it.
    entries: dict[str, str] = {}
    option = None
    for line in result.stdout.splitlines():
        if match := re.match(r"  (--[a-z-]+)", line):
            option = match[1]
            entries[option] = line
        elif option is not None and line.startswith(" " * 4):
            entries[option] += " " + line
        else:
            option = None
    defaults = {}
    for option, entry in entries.items():
        match = re.search(r"\(default: (.*)\)$", " ".join(entry.split()))
        assert match is not None, f"--help gives no default for {option}: {entry!r}"
        defaults[option] = match[1]
    return defaults


def cli_page_options() -> dict[str, str]:
    """Each row of the options table on docs/cli.rst, by option, whitespace collapsed."""
    text = (DOCS / "cli.rst").read_text()
    rows = re.findall(r"^   \* - ``(--[a-z-]+)[^`]*``\n(.*?)(?=^   \* - |^\S)", text, re.M | re.S)
    return {option: " ".join(row.split()) for option, row in rows}


def test_the_cli_page_gives_every_option_and_its_default() -> None:
    defaults = help_defaults()
    assert len(defaults) >= 14  # the parsing found the options
    documented = cli_page_options()
    assert sorted(documented) == sorted(defaults), "docs/cli.rst's options differ from --help"
    for option, default in defaults.items():
        # The row's first cell after the option is its default.
        assert documented[option].startswith(f"- {default} - "), (option, default)


def test_the_cli_page_shows_real_log_lines() -> None:
    from .test_cli import LOG_LINE

    text = (DOCS / "cli.rst").read_text()
    sample = text.split("one line per event::\n\n", 1)[1].split("\n\n", 1)[0]
    lines = [line.strip() for line in sample.splitlines()]
    assert len(lines) >= 5
    for line in lines:
        assert LOG_LINE.match(line), line
    assert any("listening on ws://" in line for line in lines)


# ------------------------------------------------------------------- examples


def test_every_example_is_checked_and_shown() -> None:
    scripts = {path.name for path in EXAMPLES.glob("*.py")}
    outputs = {path.name for path in EXAMPLES.glob("*.out")}
    assert scripts, "no examples found"
    expected_outputs = {path.with_suffix(".out").name for path in example_scripts()}
    assert sorted(outputs) == sorted(expected_outputs), (
        "each example script needs its expected output (a .out file), and each .out its script"
    )
    for name, test_module in TESTED_ELSEWHERE.items():
        assert name in (DOCS.parent / test_module).read_text(), f"{test_module} runs no {name}"
    included = "\n".join(page.read_text() for page in pages())
    for name in sorted(scripts | outputs):
        assert f"examples/{name}" in included, f"docs/examples/{name} is on no page"


@pytest.mark.parametrize("script", example_scripts(), ids=lambda path: path.name)
def test_example_runs_and_prints_what_the_docs_show(script: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=EXAMPLE_TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    # Anything on stderr is a warning or a logged error (trio_hub logs failures).
    assert result.stderr == ""
    assert result.stdout == script.with_suffix(".out").read_text()


async def read_line(stream: trio.abc.ReceiveStream, buffer: bytearray) -> str:
    while b"\n" not in buffer:
        data = await stream.receive_some()
        assert data, f"the process closed stdout; so far: {bytes(buffer)!r}"
        buffer += data
    line, _, rest = bytes(buffer).partition(b"\n")
    buffer[:] = rest
    return line.decode()


async def assert_a_publication_reaches_a_subscriber(
    alice: WebSocketConnection, bob: WebSocketConnection
) -> None:
    """An example speaks the wire protocol: bob subscribes to "t", alice publishes to it."""
    await bob.send_message(Message("subscribe", {"topic": "t"}).text)
    assert Message.decode(await bob.get_message()) == Message("subscribed", {"topic": "t"})
    await alice.send_message(Message("publish", {"topic": "t", "data": 1}).text)
    assert Message.decode(await bob.get_message()) == Message("message", {"topic": "t", "data": 1})
    assert Message.decode(await alice.get_message()) == Message(
        "publishResult", {"topic": "t", "listenerCount": 1}
    )


async def test_the_tutorial_server_serves_until_sigterm_then_stops_cleanly() -> None:
    with trio.fail_after(EXAMPLE_TIMEOUT):
        process = await trio.lowlevel.open_process(
            [sys.executable, str(EXAMPLES / "chat_server.py"), "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            assert process.stdout is not None
            buffer = bytearray()
            banner = await read_line(process.stdout, buffer)
            match = re.fullmatch(
                r"Open http://127\.0\.0\.1:(\d+)/ in a browser; Ctrl\+C stops\.", banner
            )
            assert match is not None, banner
            url = f"ws://127.0.0.1:{match[1]}/"
            async with open_websocket_url(url) as alice, open_websocket_url(url) as bob:
                await assert_a_publication_reaches_a_subscriber(alice, bob)
                process.send_signal(signal.SIGTERM)
                for connection in (alice, bob):
                    with pytest.raises(ConnectionClosed) as closed:
                        await connection.get_message()
                    assert closed.value.reason is not None
                    assert closed.value.reason.code == 1001
                    # trio-websocket's client leaves its socket open when the
                    # server starts the close handshake (as in test_cli.py).
                    await trio.aclose_forcefully(connection._stream)
            assert await process.wait() == 0
            rest = [await read_line(process.stdout, buffer) for _ in range(2)]
            assert rest == [
                "Stopping: flushing every client's queue, then closing it with 1001.",
                "Stopped.",
            ]
        finally:
            process.kill()
            await process.wait()


# ------------------------------------------------------------------- doctests


# The Redis backend's module example needs a Redis server: the test below runs
# it against a fresh one, in place of the address that the example shows.
REDIS_EXAMPLE = "trio_hub.backends.redis"
REDIS_EXAMPLE_URL = "redis://127.0.0.1:6379/0"


def docstring_doctests() -> list[doctest.DocTest]:
    """The examples in the docstrings of the public modules and of their public names."""
    finder = doctest.DocTestFinder()
    module_finder = doctest.DocTestFinder(recurse=False)
    tests: list[doctest.DocTest] = []
    for module_name in PUBLIC_MODULES:
        module = importlib.import_module(module_name)
        tests.extend(module_finder.find(module, module_name))
        for name in module.__all__:
            obj = getattr(module, name)
            # Constants and type aliases have no docstring of their own (an int
            # would bring int's own examples).
            if not (inspect.isclass(obj) or inspect.isroutine(obj)):
                continue
            tests.extend(finder.find(obj, f"{module_name}.{name}"))
    return [test for test in tests if test.examples]


def page_doctests() -> list[doctest.DocTest]:
    parser = doctest.DocTestParser()
    tests = [
        parser.get_doctest(page.read_text(), {}, str(page.relative_to(DOCS)), str(page), 0)
        for page in pages()
    ]
    return [test for test in tests if test.examples]


def test_the_docstrings_and_pages_have_examples_to_run() -> None:
    # Guards the test below against collecting nothing.
    assert len(docstring_doctests()) >= 2
    assert len(page_doctests()) >= 1


def run_doctest(test: doctest.DocTest) -> None:
    # IGNORE_EXCEPTION_DETAIL also ignores the module of an exception, so a
    # page can say trio_hub.MessageEncodeError, the public name.
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.IGNORE_EXCEPTION_DETAIL)
    output: list[str] = []
    result = runner.run(test, out=output.append)
    assert result.failed == 0, "".join(output)


@pytest.mark.parametrize(
    "test",
    [test for test in docstring_doctests() if test.name != REDIS_EXAMPLE] + page_doctests(),
    ids=lambda test: test.name,
)
def test_doctests_pass(test: doctest.DocTest) -> None:
    run_doctest(test)


def test_the_redis_backend_example_runs_against_a_real_redis() -> None:
    (test,) = [test for test in docstring_doctests() if test.name == REDIS_EXAMPLE]
    with RedisServer() as server:
        replaced = 0
        for example in test.examples:
            replaced += example.source.count(REDIS_EXAMPLE_URL)
            example.source = example.source.replace(REDIS_EXAMPLE_URL, server.url)
        assert replaced == 1, f"the example should connect to {REDIS_EXAMPLE_URL}"
        run_doctest(test)
