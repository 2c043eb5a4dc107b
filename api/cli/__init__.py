"""The ``flagrail`` command (Typer).

Errors are one line on stderr and a non-zero exit (1 for a failed operation, 2
for bad usage), never a traceback.
"""

from __future__ import annotations

import json
import sys

import typer

try:  # Typer >= 0.20 vendors Click as typer._click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older Typer on real Click
    from click import exceptions as click_exceptions

from api.cli import change_requests as approval_commands  # #16 approvals
from api.cli import demo as demo_commands
from api.cli import flags as flag_commands
from api.cli import plan as plan_commands
from api.cli import server, tokens
from api.cli import users as user_commands
from api.cli import webhooks as webhook_commands  # #17 webhooks
from api.cli.output import CliError

app = typer.Typer(
    name="flagrail",
    help="Feature flags with kill switches, staged rollouts and an audited history.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
server.register(app)
app.add_typer(server.db_app, name="db")
app.add_typer(tokens.app, name="token")
app.add_typer(user_commands.app, name="user")
app.add_typer(flag_commands.flags_app, name="flags")
flag_commands.register(app)
app.add_typer(flag_commands.env_app, name="env")
approval_commands.register_policy(flag_commands.env_app)  # flagrail env policy (#16)
app.add_typer(approval_commands.app, name="cr")  # change requests and reviews (#16)
app.add_typer(plan_commands.app, name="plan")
app.add_typer(demo_commands.app, name="demo")
app.add_typer(webhook_commands.app, name="webhook")  # #17 webhooks


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``flagrail`` console script."""
    from flags.errors import ApprovalRequiredError, FlagrailError

    try:
        result = app(args=argv, prog_name="flagrail", standalone_mode=False)
    except KeyboardInterrupt:
        print("flagrail: aborted", file=sys.stderr)
        sys.exit(130)
    except click_exceptions.ClickException as exc:  # bad usage: one line too, with a pointer
        ctx = getattr(exc, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        print(f"flagrail: error: {exc.format_message()}{hint}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except ApprovalRequiredError as exc:  # not a failure: held as a change request (#16)
        if "--json" in (sys.argv[1:] if argv is None else argv):
            print(json.dumps(exc.body, indent=2, sort_keys=True))
        else:
            print(exc)
        sys.exit(0)
    except (CliError, FlagrailError) as exc:
        print(f"flagrail: error: {exc}", file=sys.stderr)
        sys.exit(getattr(exc, "exit_code", 1))
    except OSError as exc:
        print(f"flagrail: error: {exc}", file=sys.stderr)
        sys.exit(1)
    sys.exit(result if isinstance(result, int) else 0)
