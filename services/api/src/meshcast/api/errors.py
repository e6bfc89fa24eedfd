"""The API's one failure: a Centrifugo server-API error (code and message).

Codes are the client protocol's (`ErrorCode`), as Centrifugo shares them
between its client and server APIs: 100 internal, 102 unknown channel, 104
not found, 107 bad request, 108 not available, 112 unrecoverable position.
Messages never carry a stack trace, a payload or a secret.
"""

from __future__ import annotations

from meshcast.protocol import ErrorCode


class ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    @classmethod
    def of(cls, code: ErrorCode, message: str | None = None) -> ApiError:
        return cls(int(code), message or code.message)


def bad_request(message: str) -> ApiError:
    return ApiError.of(ErrorCode.BAD_REQUEST, message)


def internal(message: str = "internal server error") -> ApiError:
    return ApiError.of(ErrorCode.INTERNAL, message)
