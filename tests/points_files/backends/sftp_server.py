"""A partner's SFTP server as its own process (``python -m tests.points_files.backends.sftp_server
ROOT PORT HOST_KEY CLIENT_PUBLIC_KEY``), so a test can kill it (SIGKILL) like a real outage and
start it again on the same port and host key. Prints ``ready`` once it listens."""

from __future__ import annotations

import asyncio
import sys

import asyncssh


async def serve(root: str, port: int, host_key: str, client_public_key: str) -> None:
    def factory(chan: asyncssh.SSHServerChannel[bytes]) -> asyncssh.SFTPServer:
        return asyncssh.SFTPServer(chan, chroot=root.encode())

    await asyncssh.listen(
        "127.0.0.1",
        port,
        server_host_keys=[host_key],
        authorized_client_keys=client_public_key,
        sftp_factory=factory,
        allow_scp=False,
        reuse_address=True,
    )
    sys.stdout.write("ready\n")
    sys.stdout.flush()
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]))
