"""The blueprint language: the rules a blueprint must follow, shared by the SDK's builder and
the server's registration (one implementation). Private: the public surface is
`tideflow.blueprint`."""
