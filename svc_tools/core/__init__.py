"""svc_tools's use cases, one concern per module; none imports grpc, generated code or a driver.

    tools.py        the ToolService use cases (Tools): list, execute, get, cancel, maintain
    listing.py      the catalogue in pages (Catalogue)
    acceptance.py   an ExecuteTool request checked and turned into an Execution
    arguments.py    tool arguments against their JSON schemas (ArgumentSchemas)
    names.py        resource names, and callers kept to their tenant
    executions.py   the execution state machine (Executions), with its state diagram
    approvals.py    svc_policy's decisions and the hold -> claim -> complete protocol
    leases.py       which executions this process drives (Leases)
    live.py         what streams follow: a drive's updates (Run) and the store's changes

The memory and knowledge use cases are svc_tools.memory and svc_tools.knowledge; the
catalogue's tools are declared in svc_tools.catalogue.
"""
