"""Errors for HTTP clients, in OpenAI's JSON shape; raised by the serving routes and the fine-tuning routes alike."""

from __future__ import annotations


class ServeError(Exception):
    """An error for the client, in OpenAI's shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", *, code=None, param=None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type_, code, param


def error_body(status: int, message: str, type_: str, code=None, param=None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}
