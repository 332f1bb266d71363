"""kube_ipsec.ike"""
